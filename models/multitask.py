"""Multi-data multi-task training primitives: the masked task loss and the multi-dataset batch sampler.

Why: no dataset is labelled for everything (a text-only feed, photos, an attribute only some products carry).
Each task's loss is computed only on rows where its label exists (``-1`` = missing) and the task losses are
summed with configurable weights, as the talk describes (the released octopod loop did not sum them). Batches
are drawn from several datasets, shuffled together with weights, so a dataset labelled for one attribute still
trains the shared trunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def masked_multitask_loss(
    logits: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over tasks of ``weight * mean cross-entropy over rows whose label is >= 0``.

    A task with no labelled row in the batch contributes nothing (not a NaN, not a zero-weighted mean over
    the batch), and tasks missing from ``targets`` are skipped. Returns the total and each task's loss.
    """
    total: torch.Tensor | None = None
    parts: dict[str, float] = {}
    for attr, lg in logits.items():
        t = targets.get(attr)
        if t is None:
            continue
        mask = t >= 0
        if not bool(mask.any()):
            continue
        loss = F.cross_entropy(lg[mask].float(), t[mask], label_smoothing=label_smoothing)
        w = 1.0 if weights is None else float(weights.get(attr, 1.0))
        parts[attr] = float(loss.detach())
        total = w * loss if total is None else total + w * loss
    if total is None:
        any_lg = next(iter(logits.values()))
        total = any_lg.sum() * 0.0
    return total, parts


class MultiDatasetSampler:
    """Yields ``(dataset_index, row_indices)`` batches drawn across datasets with weights.

    Each dataset is walked through its own seeded permutation (reshuffled when exhausted), so every row is
    seen before any repeats; which dataset feeds the next batch is a seeded draw with probability proportional
    to ``weight * size`` (all weights 1: one epoch sees each row about once; weight 2: that dataset twice). One epoch is
    ``sum(ceil(size / batch_size))`` batches unless ``batches_per_epoch`` says otherwise. Deterministic for a
    given ``seed`` and :meth:`set_epoch`.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        batches_per_epoch: int | None = None,
    ) -> None:
        if not sizes or any(s < 0 for s in sizes):
            raise ValueError("sizes must be non-negative and non-empty")
        self.sizes = list(sizes)
        self.batch_size = batch_size
        w = np.array(weights if weights is not None else [1.0] * len(sizes), dtype=np.float64)
        w = w * np.array(self.sizes, dtype=np.float64)  # weight 1 = the dataset's natural share (its size)
        if w.sum() <= 0:
            raise ValueError("no dataset with rows and positive weight")
        self.probs = w / w.sum()
        self.seed = seed
        self.epoch = 0
        self.batches_per_epoch = batches_per_epoch or sum(
            math.ceil(s / batch_size) for s, p in zip(self.sizes, self.probs, strict=True) if p > 0
        )

    def set_epoch(self, epoch: int) -> None:
        """Reseed for ``epoch`` (so a resumed run draws the same batches as an uninterrupted one)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        perms = [rng.permutation(s) for s in self.sizes]
        pos = [0] * len(self.sizes)
        for _ in range(self.batches_per_epoch):
            d = int(rng.choice(len(self.sizes), p=self.probs))
            size = self.sizes[d]
            take = min(self.batch_size, size)
            if pos[d] + take > size:
                perms[d] = rng.permutation(size)
                pos[d] = 0
            idx = perms[d][pos[d] : pos[d] + take]
            pos[d] += take
            yield d, idx
