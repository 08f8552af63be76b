"""Photo augmentation for the cached-feature path (``enrich train --image-augment``): geometric only,
reproducible per photo, cached under its own key, and actually shown to the model during training."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.augment import PhotoAugment
from models.catalog.synthetic import generate_catalog
from models.image_model import ImagePreprocess, MultiTaskImageModel, build_backbone
from models.train import TaskData, _image_inputs, cache_image_features


def _photo(w: int = 60, h: int = 80) -> Image.Image:
    """A photo whose left half is red and right half blue, on nothing else: flips and crops are visible."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[:, : w // 2] = (200, 20, 20)
    a[:, w // 2 :] = (20, 20, 200)
    return Image.fromarray(a)


def test_same_photo_variant_and_seed_give_the_same_transform() -> None:
    aug, img = PhotoAugment(), _photo()
    first = aug.apply(img, aug.rng(0, 1, "a.jpg"))
    assert first.size == img.size
    assert np.array_equal(np.asarray(first), np.asarray(aug.apply(img, aug.rng(0, 1, "a.jpg"))))
    others = [aug.apply(img, aug.rng(s, v, p)) for s, v, p in ((0, 2, "a.jpg"), (1, 1, "a.jpg"), (0, 1, "b.jpg"))]
    assert all(not np.array_equal(np.asarray(first), np.asarray(o)) for o in others)


def test_flip_only_mirrors_and_leaves_colours_alone() -> None:
    img = _photo()
    mirror = PhotoAugment(scale=(1.0, 1.0), ratio=(0.75, 0.75), max_rotate=0.0, flip=1.0)
    out = np.asarray(mirror.apply(img, mirror.rng(0, 1, "x")))
    assert np.array_equal(out, np.asarray(img)[:, ::-1])
    # crops and flips (no rotation, so no background fill) never invent a colour the photo does not have
    geometric = PhotoAugment(max_rotate=0.0)
    for v in range(1, 6):
        px = np.asarray(geometric.apply(img, geometric.rng(0, v, "x"))).reshape(-1, 3)
        reds, blues = (px[:, 0] > px[:, 2]), (px[:, 2] > px[:, 0])
        assert np.all(px[:, 1] <= 25) and (reds | blues).all()


def test_rotation_fills_with_the_white_background() -> None:
    rot = PhotoAugment(scale=(1.0, 1.0), ratio=(0.75, 0.75), max_rotate=10.0, flip=0.0)
    rng = rot.rng(0, 1, "x")
    out = np.asarray(rot.apply(Image.new("RGB", (60, 80), (0, 0, 0)), rng))
    assert (out[0, 0] > 200).all() and (out[40, 30] == 0).all()  # corner filled white, centre untouched


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    styles = generate_catalog(tmp_path_factory.mktemp("aug") / "cat", n_products=12, seed=5, image_size=64)
    return sorted((styles.parent / "images").glob("*.jpg"))


def test_augmented_caches_are_distinct_and_reproducible(photos: list[Path], tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MultiTaskImageModel(build_backbone("tiny"), {"color": 3}, pixel_stats=2).eval()
    prep, dev = ImagePreprocess(size=32), torch.device("cpu")
    paths = [*photos, None]  # a product without a photo stays "not ok" in every copy

    def cache(d: Path, **aug: object) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        d.mkdir(exist_ok=True)
        return cache_image_features(model, prep, paths, dev, d, "t", progress=False, **aug)  # type: ignore[arg-type]

    plain, ok, _ = cache(tmp_path / "a")
    v1, ok1, st1 = cache(tmp_path / "a", augment=PhotoAugment(), variant=1)
    v2, _, _ = cache(tmp_path / "a", augment=PhotoAugment(), variant=2)
    features = [f for f in (tmp_path / "a").iterdir() if re.fullmatch(r"image-[0-9a-f]{16}\.npy", f.name)]
    assert len(features) == 3  # one cache per version
    assert ok.tolist() == ok1.tolist() == [True] * len(photos) + [False]
    assert not np.array_equal(plain[ok], v1[ok]) and not np.array_equal(v1[ok], v2[ok])
    again, _, st_again = cache(tmp_path / "b", augment=PhotoAugment(), variant=1)  # recomputed, not loaded
    assert np.array_equal(v1, again) and st1 is not None and np.array_equal(st1, st_again)


def test_each_row_is_shown_in_the_version_drawn_for_the_epoch() -> None:
    n = 5
    d = TaskData("image", 0, [str(i) for i in range(n)], np.zeros((n, 1), dtype=np.int64),
                 np.zeros((n, 1, 2), dtype=np.float16), stats=np.zeros((n, 1, 3), dtype=np.float32))
    d.variants = [np.full((n, 1, 2), 1, np.float16), np.full((n, 1, 2), 2, np.float16)]
    d.variant_stats = [np.full((n, 1, 3), 1, np.float32), np.full((n, 1, 3), 2, np.float32)]
    idx = np.array([4, 0, 2, 3])
    d.shown = np.array([0, 1, 2, 1, 2])
    x, st = _image_inputs(d, idx, torch.device("cpu"))
    assert x[:, 0, 0].tolist() == [2.0, 0.0, 2.0, 1.0]
    assert st is not None and st[:, 0, 0].tolist() == [2.0, 0.0, 2.0, 1.0]
    assert d.feats.max() == 0  # the originals are untouched
    d.choose_variants(np.random.default_rng(0))
    assert d.shown is not None and set(d.shown.tolist()) <= {0, 1, 2}
    seen = set()
    for e in range(20):
        d.choose_variants(np.random.default_rng([0, e]))
        seen |= set(d.shown.tolist())
    assert seen == {0, 1, 2}
    plain = TaskData("image", 0, ["a"], np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1, 2), dtype=np.float16))
    plain.choose_variants(np.random.default_rng(0))
    assert plain.shown is None  # no copies cached: always the photo itself


def test_train_command_refuses_a_negative_augment_count(tmp_path: Path) -> None:
    from models.train import train_command

    with pytest.raises(ValueError, match="image_augment"):
        train_command(catalog=[str(tmp_path / "styles.csv")], out=str(tmp_path / "b"), image_augment=-1)
    assert not (tmp_path / "b.work").exists()  # refused before anything was written
