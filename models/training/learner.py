"""The multi-task training loop over cached features (Octopod's ``MultiTaskLearner`` role): validation loss and
accuracy per task, used to keep each model's best epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from models.multitask import masked_multitask_loss
from models.training.features import TaskData, _image_logits, _targets, _text_logits

log = logging.getLogger(__name__)


def _val_loss(model: torch.nn.Module, ds: Sequence[TaskData], names: Sequence[str], device: torch.device,
              weights: Mapping[str, float]) -> tuple[float, dict[str, float]]:
    """Mean validation loss (per row) and top-1 accuracy per task over labelled rows."""
    model.eval()
    tot, n = 0.0, 0
    hits = dict.fromkeys(names, 0)
    seen = dict.fromkeys(names, 0)
    with torch.inference_mode():
        for d in ds:
            for s in range(0, len(d.ids), 256):
                idx = np.arange(s, min(s + 256, len(d.ids)))
                fn = _text_logits if d.kind == "text" else _image_logits
                logits = fn(model, d, idx, device)  # type: ignore[arg-type]
                tg = _targets(d, idx, names, device)
                loss, _ = masked_multitask_loss(logits, tg, weights)
                tot += float(loss) * len(idx)
                n += len(idx)
                for a in names:
                    m = tg[a] >= 0
                    hits[a] += int((logits[a].argmax(1)[m] == tg[a][m]).sum())
                    seen[a] += int(m.sum())
    return tot / max(1, n), {a: hits[a] / seen[a] for a in names if seen[a]}


