"""The bundle manifest, typed and read in one place.

``manifest.json`` is written by ``models.bundle.save_bundle``; everything that reads it (``Bundle.load``,
``enrich evaluate``, ``enrich add-heads``, the drift guard) goes through :class:`Manifest`, so a key's name,
default and meaning for older bundles (no ``split`` = the hash split with seed 0, no ``drift`` = nothing
guarded, no ``text_fusion`` = BERT alone) is decided here once. ``raw`` keeps the JSON as written, for
sections only a report prints (``metrics``, ``training``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.data import SplitSpec

MANIFEST = "manifest.json"
FORMAT = "enrich-bundle/1"


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest (see ``models/bundle.py`` for the layout of the directory)."""

    name: str
    version: str
    attributes: list[str]
    taxonomy: dict[str, Any]
    image: dict[str, Any] | None
    text: dict[str, Any] | None
    wide: dict[str, Any] | None
    #: per attribute, the BERT + wide pool (``sources`` removed)
    text_fusion: dict[str, Any]
    fusion: dict[str, Any]
    thresholds: dict[str, dict[str, float]]
    split: SplitSpec
    #: per attribute, the words whose absence selects the ``-unmentioned`` fusion modes
    mention_words: dict[str, list[str]]
    #: per attribute, the training-time image-text agreement band (``models.drift.agreement_band``)
    drift: dict[str, dict[str, Any]]
    #: photo shapes trained on and the shifted validation folds fitted on (``{"trained", "shift_folds"}``)
    photo_shapes: dict[str, list[str]]
    training_catalogs: list[str]
    heads_added: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Manifest:
        """Validate the format and fill the defaults older bundles imply."""
        if d.get("format") != FORMAT:
            raise ValueError(f"not an enrich bundle manifest (format {d.get('format')!r})")
        tf = dict(d.get("text_fusion") or {})
        tf.pop("sources", None)
        return cls(
            name=str(d["name"]), version=str(d.get("version", "")), attributes=list(d["attributes"]),
            taxonomy=dict(d["taxonomy"]), image=d.get("image") or None, text=d.get("text") or None,
            wide=d.get("wide") or None, text_fusion=tf, fusion=dict(d.get("fusion") or {}),
            thresholds={a: dict(t) for a, t in (d.get("thresholds") or {}).items()},
            split=SplitSpec.from_json(d.get("split")),
            mention_words={a: list(w) for a, w in (d.get("mention_words") or {}).items()},
            drift={a: dict(v) for a, v in (d.get("drift") or {}).items() if v},
            photo_shapes=dict(d.get("photo_shapes") or {"trained": [], "shift_folds": []}),
            training_catalogs=[str(c) for c in (d.get("training") or {}).get("catalogs", [])],
            heads_added=list(d.get("heads_added") or []), raw=dict(d),
        )

    @classmethod
    def read(cls, bundle_dir: str | Path) -> Manifest:
        """``bundle_dir/manifest.json``."""
        p = Path(bundle_dir) / MANIFEST
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise ValueError(f"{bundle_dir}: no {MANIFEST}") from None
        try:
            return cls.from_json(d)
        except ValueError as exc:
            raise ValueError(f"{bundle_dir}: {exc}") from None

    def catalogs_on_split(self) -> list[str]:
        """The catalogs whose products this bundle's split decided (training, and ``add-heads`` with the same
        split seed): for these, ``enrich evaluate`` scores only the held-out test rows."""
        seed = self.split.seed
        return self.training_catalogs + [h["catalog"] for h in self.heads_added if h.get("split_seed", seed) == seed]
