"""Photo augmentation for the cached-feature training path.

The image model trains only its trunk's top on cached bottom features (a full CNN pass per step does not fit
two CPU cores), so augmentation cannot happen per step. Instead ``enrich train --image-augment K`` caches K
extra feature copies of every *training* photo, each from a randomly transformed photo, and every epoch each
photo is shown as one of its K + 1 versions. Run 3's image model fitted its training photos far better than
validation ones (summed loss 1.50 against 2.78); this is the cheapest way to show it more than one picture
of each product.

Only geometric changes: colour is one of the attributes, so brightness, saturation and hue stay untouched.
Each photo's transform is drawn from a generator seeded by (seed, variant, photo path), so a cache is
reproducible and does not depend on the order or the batch the photo was decoded in.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Catalog photos are shot on white; rotation fills the corners with it rather than black wedges.
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class PhotoAugment:
    """Random resized crop (``scale`` of the area, aspect ``ratio``), rotation up to ``max_rotate`` degrees
    and a horizontal flip with probability ``flip``; the result keeps the input's size, and the two views are
    cut from it as from any photo (``ImagePreprocess.views``)."""

    scale: tuple[float, float] = (0.7, 1.0)
    ratio: tuple[float, float] = (0.8, 1.25)
    max_rotate: float = 10.0
    flip: float = 0.5

    def rng(self, seed: int, variant: int, path: Path | str) -> np.random.Generator:
        """The generator for one photo's one variant (independent of decode order)."""
        return np.random.default_rng([seed, variant, zlib.crc32(str(path).encode())])

    def apply(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        """One random transform of ``img`` (RGB), same size as ``img``."""
        w, h = img.size
        area = w * h * rng.uniform(*self.scale)
        aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
        cw = max(1, min(w, round(math.sqrt(area * aspect))))
        ch = max(1, min(h, round(math.sqrt(area / aspect))))
        left = int(rng.integers(0, w - cw + 1))
        top = int(rng.integers(0, h - ch + 1))
        angle = float(rng.uniform(-self.max_rotate, self.max_rotate))
        flip = bool(rng.random() < self.flip)
        out = img
        if angle:
            out = out.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=BACKGROUND)
        out = out.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BILINEAR)
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else out

    def to_json(self) -> dict[str, Any]:
        """Manifest and cache-key form."""
        d = asdict(self)
        d["scale"], d["ratio"] = list(self.scale), list(self.ratio)
        return d


#: The retailer's original photo shape (width:height); the shared photos were squashed from it to 224x224.
PORTRAIT = (3, 4)
#: Photo shapes a bundle is checked (and, with ``--image-shape-views``, trained) on: ``squash`` the photo
#: un-squashed to its 3:4 original (the serving preprocess squashes it back to a square), ``letterbox`` that
#: 3:4 original padded with white bars to a square, as a vendor who keeps the aspect ratio would send it
#: (the garment is then 3/4 as wide as in training).
PHOTO_SHAPES = ("squash", "letterbox")


@dataclass(frozen=True)
class PhotoShape:
    """A deterministic photo-shape shift with :class:`PhotoAugment`'s interface (``rng`` / ``apply`` /
    ``to_json``), so it caches and trains through the same variant path.

    ``apply`` assumes a photo squashed to a square from a 3:4 original (the shared catalog): it first
    restores the 3:4 shape (height 4/3 of the width), then for ``letterbox`` pads it to a white square.
    """

    mode: str = "letterbox"

    def __post_init__(self) -> None:
        if self.mode not in PHOTO_SHAPES:
            raise ValueError(f"unknown photo shape {self.mode!r} ({' | '.join(PHOTO_SHAPES)})")

    def rng(self, seed: int, variant: int, path: Path | str) -> np.random.Generator:
        """Unused (the shift is deterministic); kept for the variant-cache interface."""
        return np.random.default_rng(0)

    def apply(self, img: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        """The photo at 3:4 (``squash``) or at 3:4 letterboxed into a white square (``letterbox``)."""
        w, _h = img.size
        ph = round(w * PORTRAIT[1] / PORTRAIT[0])
        portrait = img.resize((w, ph), Image.Resampling.BICUBIC)
        if self.mode == "squash":
            return portrait
        canvas = Image.new("RGB", (ph, ph), BACKGROUND)
        canvas.paste(portrait, ((ph - w) // 2, 0))
        return canvas

    def to_json(self) -> dict[str, Any]:
        """Manifest and cache-key form."""
        return {"shape": self.mode, "aspect": list(PORTRAIT)}
