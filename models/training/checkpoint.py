"""Training checkpoints: safetensors + JSON, never pickles; only the state training changes is written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.image_model import MultiTaskImageModel
from models.text_model import MultiTaskTextModel

log = logging.getLogger(__name__)


# --- checkpoints (safetensors + JSON; never pickles) -----------------------------------------------------
def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """CPU copies of the state that training changes (not the frozen bottom / encoder layers).

    Why: copying and writing the frozen 22M-parameter encoder after every epoch cost more than the epoch.
    """
    if isinstance(model, MultiTaskImageModel):
        keep = lambda k: not k.startswith("bottom.")  # noqa: E731
    elif isinstance(model, MultiTaskTextModel):
        top = tuple(f"encoder.encoder.layer.{i}." for i in range(model.cut, model.cut + model.train_layers))
        keep = lambda k: not k.startswith("encoder.") or k.startswith(top)  # noqa: E731
    else:
        keep = lambda k: True  # noqa: E731
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if keep(k)}


def _save_ckpt(path: Path, models: Mapping[str, torch.nn.Module], opt: torch.optim.Optimizer,
               best: Mapping[str, dict[str, torch.Tensor]], state: Mapping[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for name, m in models.items():
        tensors.update({f"model.{name}.{k}": v.contiguous() for k, v in trained_state(m).items()})
    for name, sd in best.items():
        tensors.update({f"best.{name}.{k}": v.contiguous().clone() for k, v in sd.items()})
    osd = opt.state_dict()
    for pid, st in osd["state"].items():
        for k, v in st.items():
            tensors[f"opt.{pid}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous().clone()
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    path.with_suffix(".json").write_text(json.dumps({**state, "param_groups": osd["param_groups"]}))


def _load_ckpt(path: Path, models: Mapping[str, torch.nn.Module], opt: torch.optim.Optimizer
               ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    for name, m in models.items():
        p = f"model.{name}."
        m.load_state_dict({k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}, strict=False)
    best: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("best."):
            _, name, rest = k.split(".", 2)
            best.setdefault(name, {})[rest] = v
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, key = k.split(".", 2)
            state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return best, meta


