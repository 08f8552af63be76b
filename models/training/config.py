"""Every option of ``enrich train``, ``enrich add-heads`` and ``enrich evaluate``, declared once, with its help.

One dataclass per command (:class:`TrainConfig`, :class:`AddHeadsConfig`, :class:`EvaluateConfig`). The CLI
builds each command's flags from :func:`options` (flag name, type, default, help), the command functions'
docstrings and docs/models.md list :func:`flag_help`, the demo bundle (``models.train.DEMO_CONFIG``) and the
tests pass their overrides as fields. A misspelt option is a ``TypeError`` at construction, never a silently
ignored keyword, and an invalid value a ``ValueError`` before any work starts.

The module imports nothing heavy (no torch, numpy or PIL): the CLI reads it to build ``enrich --help``.
"""

from __future__ import annotations

import dataclasses
import textwrap
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


def _m(help: str, flag: str | None = None, repeatable: bool = False, metavar: str | None = None
       ) -> dict[str, Any]:
    """A field's metadata: its help text, the CLI flag name when it is not the field's, repeatable or not, and
    the value's placeholder when the type's (TEXT, INT) says too little (a directory, a file)."""
    return {"help": help, "flag": flag, "repeatable": repeatable, "metavar": metavar}


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
        "VAL_FROM,TEST_FROM years of --split year; a single VAL_FROM year splits the products from it on "
        "between validation and test by the seeded hash (the fusion is fitted on the test's later years)"))
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
        self.split_bounds()  # refuses malformed --split-years before any work

    def split_bounds(self) -> tuple[int, int | None]:
        """``(val_from, test_from)`` of ``split_years``; ``test_from`` is None for a single year."""
        years = self.split_years.split(",")
        if (len(years) not in (1, 2) or not all(y.strip().isdigit() for y in years)
                or int(years[0]) > int(years[-1])):
            raise ValueError(f"split_years must be VAL_FROM[,TEST_FROM] years, got {self.split_years!r}")
        return int(years[0]), (int(years[1]) if len(years) == 2 else None)

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


@dataclass
class AddHeadsConfig:
    """Options of one ``enrich add-heads`` run (``models.heads.add_heads_command``); bundle, catalog, out and
    the attributes have no default. No ``replace`` method as :class:`TrainConfig` has (``--replace`` is an
    option): ``dataclasses.replace`` makes a changed copy of either new config."""

    bundle: str = field(metadata=_m(
        "the trained bundle whose trunks are reused (left untouched)", metavar="DIR"))
    catalog: str = field(metadata=_m(
        "Kaggle-format styles.csv carrying the new attributes' columns (a column named like the attribute, e.g. "
        "sleeve_length, or a Kaggle column)", metavar="PATH"))
    out: str = field(metadata=_m(
        "the new bundle's directory (must differ from --bundle: a bundle is never modified in place)",
        metavar="DIR"))
    attributes: list[str] = field(metadata=_m(
        "an attribute to add (its column in --catalog)", flag="attribute", repeatable=True, metavar="NAME"))
    replace: bool = field(default=False, metadata=_m(
        "also allow attributes the bundle has: their heads, pools, fusion and thresholds are retrained (new "
        "values, relabelled data)"))
    name: str | None = field(default=None, metadata=_m(
        "bundle name [the base bundle's]"))
    min_class_count: int = field(default=20, metadata=_m(
        'values rarer than this in train merge into "other"'))
    target_precision: float = field(default=0.9, metadata=_m(
        "the new attributes' thresholds reach this validation precision"))
    linear_text: bool = field(default=True, metadata=_m(
        "also fit a head on the bundle's wide TF-IDF text model (when it has one)"))
    linear_c: float = field(default=10.0, metadata=_m(
        "its inverse L2 strength C"))
    mention_fusion: str = field(default="", metadata=_m(
        'comma-separated new attributes that also get "-unmentioned" fusion modes for texts naming none of their '
        "values [none]"))
    seed: int | None = field(default=None, metadata=_m(
        "split seed [the bundle's: with the bundle's own catalog, its test split stays unseen]"))
    max_products: int | None = field(default=None, metadata=_m(
        "use at most this many products of the catalog (quick runs)"))
    work_dir: str | None = field(default=None, metadata=_m(
        "feature caches; enrich train's --work-dir reuses its frozen-bottom caches [<out>.work]", metavar="DIR"))
    device: str = field(default="auto", metadata=_m(
        "auto | cpu | cuda"))
    threads: int | None = field(default=None, metadata=_m(
        "torch CPU threads [all cores]"))
    progress: bool = field(default=True, metadata=_m(
        "progress bars"))

    def __post_init__(self) -> None:
        self.bundle, self.catalog, self.out = str(self.bundle), str(self.catalog), str(self.out)
        self.attributes = [str(a) for a in self.attributes]
        if self.work_dir is not None:
            self.work_dir = str(self.work_dir)
        if not self.attributes:
            raise ValueError("name at least one --attribute to add")
        if self.min_class_count < 1:
            raise ValueError(f"min_class_count must be >= 1, got {self.min_class_count}")
        if not 0 < self.target_precision <= 1:
            raise ValueError(f"target_precision must be in (0, 1], got {self.target_precision}")
        if self.linear_c <= 0:
            raise ValueError(f"linear_c must be > 0, got {self.linear_c}")


#: ``enrich evaluate --split``: the bundle's held-out test split of a catalog it was trained on, else every row
EVAL_SPLITS = ("auto", "test", "val", "train", "all")
#: ``enrich evaluate --photo-shape``: ``models.augment.PHOTO_SHAPES`` (not imported: it pulls PIL and numpy;
#: tests/test_models_config.py pins the two equal)
EVAL_PHOTO_SHAPES = ("squash", "letterbox")


def parse_years(text: str) -> frozenset[int]:
    """``"2012,2015-2017"`` -> {2012, 2015, 2016, 2017}; anything else is a ``ValueError`` naming the part.

    Here rather than in ``models.evaluate`` (which re-exports it) so that :class:`EvaluateConfig` refuses a bad
    ``--years`` at construction without importing the evaluation's torch-heavy modules."""
    out: set[int] = set()
    for part in (x.strip() for x in text.split(",")):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()) or (dash and int(hi) < int(lo)):
            raise ValueError(f"years: {part!r} is not a year or a range like 2015-2017")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


@dataclass
class EvaluateConfig:
    """Options of one ``enrich evaluate`` run (``models.evaluate.evaluate_command``); bundle and catalog have
    no default."""

    bundle: str = field(metadata=_m(
        "trained bundle", metavar="DIR"))
    catalog: str = field(metadata=_m(
        "Kaggle-format styles.csv (or its directory); photos of any size or shape", metavar="PATH"))
    json_out: str | None = field(default=None, metadata=_m(
        "write the JSON report here", flag="json", metavar="FILE"))
    plots: str | None = field(default=None, metadata=_m(
        "write PNG confusion matrices and precision-coverage curves here [next to --json, else none]",
        metavar="DIR"))
    split: str = field(default="auto", metadata=_m(
        "rows to score: auto | test | val | train | all; auto = the held-out test split for a catalog the bundle "
        "was trained on, all rows for any other catalog"))
    baseline: bool = field(default=True, metadata=_m(
        "also fit TF-IDF + logistic regression on the same split's train titles and score it on the same rows"))
    strip_color_words: bool = field(default=False, metadata=_m(
        "remove every colour word from titles/descriptions first (shows how much colour the image carries)"))
    attributes: list[str] | None = field(default=None, metadata=_m(
        "only these attributes [all of the bundle's]", flag="attribute", repeatable=True, metavar="NAME"))
    max_products: int | None = field(default=None, metadata=_m(
        "score at most this many rows (quick checks)"))
    device: str = field(default="auto", metadata=_m(
        "auto | cpu | cuda"))
    progress: bool = field(default=True, metadata=_m(
        "progress bars"))
    against: str | None = field(default=None, metadata=_m(
        "another bundle (e.g. the one serving now) scored on the same rows: accuracy of both ensembles, and of "
        "each single model, with the paired test (report key against)", metavar="DIR"))
    photo_shape: str | None = field(default=None, metadata=_m(
        "squash | letterbox: serve every photo at the retailer's 3:4 shape first: un-squashed (the preprocess "
        "squashes it back) or letterboxed into a white square (the photo-shape shift check; report key "
        "catalog.photo_shape)"))
    years: str | None = field(default=None, metadata=_m(
        "only products of these catalogue years, e.g. 2012,2015-2017 (the year shift inside a split: years few "
        "training photos come from; report key catalog.years)", metavar="LIST"))

    def __post_init__(self) -> None:
        self.bundle, self.catalog = str(self.bundle), str(self.catalog)
        for name in ("json_out", "plots", "against"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))
        if self.attributes is not None:
            self.attributes = [str(a) for a in self.attributes]
        if self.split not in EVAL_SPLITS:
            raise ValueError(f"split must be {' | '.join(EVAL_SPLITS)}, got {self.split!r}")
        if self.photo_shape is not None and self.photo_shape not in EVAL_PHOTO_SHAPES:
            raise ValueError(f"photo_shape must be {' | '.join(EVAL_PHOTO_SHAPES)}, got {self.photo_shape!r}")
        if self.years:
            parse_years(self.years)

    @property
    def year_set(self) -> frozenset[int] | None:
        """The catalogue years to keep (``years`` parsed), or None for all."""
        return parse_years(self.years) if self.years else None


@dataclass(frozen=True)
class Option:
    """One option as the CLI declares it: ``--flag`` (or ``--flag/--no-flag`` for booleans).

    ``required``: the field has no default (the command cannot run without it); ``metavar``: the value's
    placeholder when the type's says too little (DIR, FILE), else None."""

    name: str
    flag: str
    type: str
    default: Any
    help: str
    repeatable: bool
    required: bool = False
    metavar: str | None = None


#: the config classes :func:`options` and :func:`flag_help` read
ConfigType = type[TrainConfig] | type[AddHeadsConfig] | type[EvaluateConfig]


def options(config_type: ConfigType = TrainConfig) -> Iterator[Option]:
    """The options of a config class in declaration order, for the CLI and the docs."""
    for f in dataclasses.fields(config_type):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        d = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        typ = str(f.type).replace(" | None", "")
        yield Option(f.name, "--" + (f.metadata.get("flag") or f.name).replace("_", "-"), typ,
                     None if required else d, str(f.metadata["help"]), bool(f.metadata.get("repeatable")),
                     required, f.metadata.get("metavar"))


def flag_help(config_type: ConfigType = TrainConfig, width: int = 112) -> str:
    """A command's flag list (its function's docstring and docs/models.md): ``enrich train``'s by default."""
    metavar = {"int": "INT", "float": "FLOAT", "str": "TEXT", "list[str]": "TEXT"}
    lines = []
    for o in options(config_type):
        if o.type == "bool":
            flag = f"{o.flag}/--no-{o.flag[2:]}"
            default = f" [{o.flag[2:] if o.default else 'no-' + o.flag[2:]}]"
        else:
            flag = f"{o.flag} {o.metavar or metavar.get(o.type, o.type.upper())}"
            default = " [required]" if o.required else "" if o.default in (None, [], "") else f" [{o.default}]"
        if o.repeatable:
            flag += " (repeatable)"
        first = f"  {flag:<30} "
        if len(first) > 33:  # a long flag gets a line of its own, its help below it in the column
            lines.append(first.rstrip())
            first = ""
        lines.extend(textwrap.wrap(o.help + default, width, initial_indent=first.ljust(33),
                                   subsequent_indent=" " * 33, break_on_hyphens=False))
    return "\n".join(lines)


def fill_flag_help(func: Any, config_type: ConfigType) -> None:
    """Put ``config_type``'s :func:`flag_help` where ``func``'s docstring says ``{FLAGS}``: the command
    functions' flag lists are generated, not written (one declaration of every option)."""
    if func.__doc__:
        func.__doc__ = func.__doc__.replace("{FLAGS}", textwrap.indent(flag_help(config_type), "    "))
