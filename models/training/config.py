"""``TrainConfig``: every ``enrich train`` option, declared once, with its help text.

The CLI builds its flags from :func:`options` (flag name, type, default, help), ``train_command``'s docstring
and docs/models.md list :func:`flag_help`, the demo bundle (``models.train.DEMO_CONFIG``) and the tests pass
their overrides as ``TrainConfig`` fields. A misspelt option is a ``TypeError`` at construction, never a
silently ignored keyword.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


def _m(help: str, flag: str | None = None, repeatable: bool = False) -> dict[str, Any]:
    """A field's metadata: its help text, the CLI flag name when it is not the field's, repeatable or not."""
    return {"help": help, "flag": flag, "repeatable": repeatable}


@dataclass
class TrainConfig:
    """Options of one training run (see each field's ``help``; :func:`flag_help` prints them all)."""

    catalog: list[str] = field(default_factory=list, metadata=_m(
        "Kaggle-format styles.csv (or its directory); each one is a dataset", repeatable=True))
    out: str = field(default="", metadata=_m(
        "bundle directory to write"))
    name: str = field(default="enrich", metadata=_m(
        "bundle name"))
    attributes: list[str] | None = field(default=None, metadata=_m(
        "attributes to train [all present: color, article_type, master_category, sub_category, gender, usage, "
        "season, pattern]; a name that is not one of these is read from the catalog column of that name (e.g. "
        "year)", flag="attribute", repeatable=True))
    image_backbone: str = field(default="efficientnet-lite0", metadata=_m(
        "image trunk, a name of the backbone registry (models.image_model.BACKBONES): efficientnet-lite0 | "
        "resnet50 | tiny"))
    image_weights: str | None = field(default=None, metadata=_m(
        "ImageNet weights file for resnet50 [$TORCH_HOME]"))
    image_size: int = field(default=192, metadata=_m(
        "side of both image views"))
    image_top_blocks: int = field(default=1, metadata=_m(
        "trailing backbone blocks fine-tuned (the rest is frozen, cached)"))
    image_pixel_stats: int = field(default=4, metadata=_m(
        "also feed each view's GxG average-pooled pixels to the heads, 0 disables"))
    image_augment: int = field(default=0, metadata=_m(
        "cache this many randomly cropped / rotated / flipped copies of every training photo; each epoch shows "
        "each photo as one of its versions. Costs one CNN-bottom pass per copy, once. Not part of the resume "
        "key"))
    image_shape_views: str = field(default="letterbox", metadata=_m(
        "comma-separated photo shapes (squash, letterbox: the photo at the retailer's 3:4, squashed back or "
        "letterboxed into a white square) cached as one more version of every training photo, so a vendor's "
        'original photo is not out of distribution; "" for none'))
    shift_folds: str = field(default="squash,letterbox", metadata=_m(
        "photo shapes under which the validation photos are cached too: model selection, the fusion (never more "
        "than one product below its best single source in any of them) and the thresholds are fitted on these "
        'shifted folds next to the photos as they are; "" for none'))
    year_fold: bool = field(default=True, metadata=_m(
        "validation products from catalogue years that few training photos come from (outside the most common "
        "years holding half of them) form a shifted fold of their own: the fusion is never more than one product "
        "below its best single source on them either (the year shift inside a random split)"))
    split: str = field(default="hash", metadata=_m(
        "hash: products split 80/10/10 by a seeded hash of the id; year: by catalogue year (train before the "
        "first of --split-years, validate up to the second, test from it), a split that looks like the future"))
    split_years: str = field(default="2013,2016", metadata=_m(
        "VAL_FROM,TEST_FROM years of --split year"))
    text_encoder: str | None = field(default=None, metadata=_m(
        "local Hugging Face BERT directory [packaged all-MiniLM-L6-v2]"))
    text_train_layers: int = field(default=1, metadata=_m(
        "top encoder layers fine-tuned (the rest is frozen, cached)"))
    text_max_len: int = field(default=48, metadata=_m(
        "max tokens of title . brand . description"))
    wide_buckets: int = field(default=1 << 17, metadata=_m(
        "hashed word n-gram buckets of the text model, 0 disables"))
    epochs: int = field(default=8, metadata=_m(
        "max epochs"))
    max_minutes: float | None = field(default=None, metadata=_m(
        "wall-clock budget for the whole run; training stops early to meet it"))
    batch_size: int = field(default=64, metadata=_m(
        "batch size"))
    lr: float = field(default=1e-3, metadata=_m(
        "heads / dense / wide learning rate"))
    trunk_lr: float = field(default=1e-4, metadata=_m(
        "fine-tuned backbone and encoder layers learning rate"))
    wide_lr: float = field(default=1e-2, metadata=_m(
        "hashed n-gram embedding learning rate (rare n-grams must be learnt from few rows, fastText-style)"))
    linear_text: bool = field(default=True, metadata=_m(
        "also fit the wide TF-IDF (word 1-2 + char 2-5 grams) + logistic regression text model on the training "
        "texts and pool it with BERT into the served text"))
    linear_c: float = field(default=10.0, metadata=_m(
        "its inverse L2 strength C"))
    mention_fusion: str = field(default="color", metadata=_m(
        'comma-separated attributes that also get "-unmentioned" fusion modes for texts naming none of their '
        'values (fitted on validation texts with the value words removed); "" for none'))
    seed: int = field(default=0, metadata=_m(
        "split, init and batch order seed"))
    task_weights: str | None = field(default=None, metadata=_m(
        'e.g. "color=2,season=0.5" (task losses are summed with these weights)'))
    dataset_weights: str | None = field(default=None, metadata=_m(
        'sampling weights, e.g. "0:text=1,0:image=2" (catalog index:modality)'))
    min_class_count: int = field(default=20, metadata=_m(
        'values rarer than this in train merge into "other"'))
    target_precision: float = field(default=0.9, metadata=_m(
        "per-attribute thresholds reach this validation precision"))
    select_by: str = field(default="accuracy", metadata=_m(
        "keep each model's epoch with the best mean validation accuracy (accuracy) or the lowest validation "
        "loss (loss)"))
    max_products: int | None = field(default=None, metadata=_m(
        "use at most this many products per catalog (quick runs)"))
    work_dir: str | None = field(default=None, metadata=_m(
        "feature caches and checkpoints [<out>.work]"))
    resume: bool = field(default=True, metadata=_m(
        "continue from the work dir's checkpoint"))
    device: str = field(default="auto", metadata=_m(
        "auto | cpu | cuda"))
    threads: int | None = field(default=None, metadata=_m(
        "torch CPU threads [all cores]"))
    progress: bool = field(default=True, metadata=_m(
        "progress bars"))

    def __post_init__(self) -> None:
        self.catalog = [str(c) for c in self.catalog]
        if self.attributes is not None:
            self.attributes = list(self.attributes)
        if self.image_augment < 0:
            raise ValueError(f"image_augment must be >= 0, got {self.image_augment}")
        if self.split not in ("hash", "year"):
            raise ValueError(f"split must be hash or year, got {self.split!r}")
        if self.select_by not in ("accuracy", "loss"):
            raise ValueError(f"select_by must be accuracy or loss, got {self.select_by!r}")
        years = self.split_years.split(",")
        if len(years) != 2 or not all(y.strip().isdigit() for y in years) or int(years[0]) > int(years[1]):
            raise ValueError(f"split_years must be VAL_FROM,TEST_FROM years, got {self.split_years!r}")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """Every option (the manifest records the run's configuration)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> TrainConfig:
        """From keyword options (unknown names raise ``TypeError``)."""
        return cls(**dict(d))


@dataclass(frozen=True)
class Option:
    """One option as the CLI declares it: ``--flag`` (or ``--flag/--no-flag`` for booleans)."""

    name: str
    flag: str
    type: str
    default: Any
    help: str
    repeatable: bool


def options() -> Iterator[Option]:
    """The options in declaration order, for the CLI and the docs."""
    for f in dataclasses.fields(TrainConfig):
        d = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        typ = str(f.type).replace(" | None", "")
        yield Option(f.name, "--" + (f.metadata.get("flag") or f.name).replace("_", "-"), typ, d,
                     str(f.metadata["help"]), bool(f.metadata.get("repeatable")))


def flag_help(width: int = 112) -> str:
    """The ``enrich train`` flag list (``train_command``'s docstring and docs/models.md)."""
    metavar = {"int": "INT", "float": "FLOAT", "str": "TEXT", "list[str]": "TEXT"}
    lines = []
    for o in options():
        if o.type == "bool":
            flag = f"{o.flag}/--no-{o.flag[2:]}"
            default = f" [{o.flag[2:] if o.default else 'no-' + o.flag[2:]}]"
        else:
            flag = f"{o.flag} {metavar.get(o.type, o.type.upper())}"
            default = "" if o.default in (None, [], "") else f" [{o.default}]"
        if o.repeatable:
            flag += " (repeatable)"
        first = f"  {flag:<30} "
        lines.extend(textwrap.wrap(o.help + default, width, initial_indent=first.ljust(33),
                                   subsequent_indent=" " * 33, break_on_hyphens=False))
    return "\n".join(lines)
