"""Masked multi-task loss and the multi-dataset sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models.multitask import MultiDatasetSampler, masked_multitask_loss


def test_loss_only_counts_labelled_rows_and_sums_tasks() -> None:
    torch.manual_seed(0)
    logits = {"color": torch.randn(4, 3, requires_grad=True), "gender": torch.randn(4, 2, requires_grad=True)}
    targets = {"color": torch.tensor([0, -1, 2, -1]), "gender": torch.tensor([-1, 1, 0, 1])}
    total, parts = masked_multitask_loss(logits, targets, {"color": 2.0})
    want_c = F.cross_entropy(logits["color"][[0, 2]], torch.tensor([0, 2]))
    want_g = F.cross_entropy(logits["gender"][[1, 2, 3]], torch.tensor([1, 0, 1]))
    assert torch.allclose(total, 2.0 * want_c + want_g)
    assert parts == pytest.approx({"color": want_c.item(), "gender": want_g.item()})
    total.backward()
    assert torch.all(logits["color"].grad[[1, 3]] == 0)  # unlabelled rows get no gradient


def test_loss_task_without_labels_contributes_nothing() -> None:
    logits = {"a": torch.randn(3, 2, requires_grad=True), "b": torch.randn(3, 4, requires_grad=True)}
    total, parts = masked_multitask_loss(logits, {"a": torch.full((3,), -1), "b": torch.tensor([1, 2, 3])})
    assert set(parts) == {"b"}
    assert torch.isfinite(total)
    total, parts = masked_multitask_loss(logits, {"a": torch.full((3,), -1)})
    assert parts == {} and total.item() == 0.0
    total.backward()  # still differentiable, so a batch with no labels cannot crash the loop


def test_sampler_is_deterministic_and_sees_every_row() -> None:
    s = MultiDatasetSampler([10, 3, 0], batch_size=4, seed=1)
    a, b = list(s), list(MultiDatasetSampler([10, 3, 0], batch_size=4, seed=1))
    assert [(d, i.tolist()) for d, i in a] == [(d, i.tolist()) for d, i in b]
    assert all(d != 2 for d, _ in a)  # an empty dataset is never drawn
    seen = {d: set() for d in range(2)}
    for d, idx in a:
        seen[d].update(idx.tolist())
        assert len(idx) <= 4 and len(set(idx.tolist())) == len(idx)
    s.set_epoch(1)
    assert [i.tolist() for _, i in s] != [i.tolist() for _, i in a]
    assert len(s) == 3 + 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=4), st.integers(1, 8), st.integers(0, 1000))
def test_sampler_indices_are_in_range(sizes: list[int], bs: int, seed: int) -> None:
    for d, idx in MultiDatasetSampler(sizes, bs, seed=seed):
        assert idx.min() >= 0 and idx.max() < sizes[d] and 1 <= len(idx) <= bs


def test_sampler_weights_shift_the_mix() -> None:
    s = MultiDatasetSampler([100, 100], batch_size=1, weights=[3.0, 1.0], seed=0, batches_per_epoch=4000)
    counts = np.bincount([d for d, _ in s], minlength=2)
    assert 0.7 < counts[0] / counts.sum() < 0.8
    with pytest.raises(ValueError):
        MultiDatasetSampler([0, 0], batch_size=2)
