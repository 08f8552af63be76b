"""The paired (McNemar) comparison that says whether a one-product accuracy gap means anything."""

from __future__ import annotations

import numpy as np
import pytest

from models.compare import paired


def test_paired_counts_and_exact_p_value() -> None:
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, -1])
    a = y.copy()
    b = y.copy()
    b[:9] = (y[:9] + 1) % 3  # b wrong on the first 9 labelled rows, a right everywhere
    r = paired(y, a, b)
    assert r == {"n": 11, "a_only_right": 9, "b_only_right": 0, "p_value": pytest.approx(2 * 0.5**9)}
    assert paired(y, b, a)["p_value"] == pytest.approx(r["p_value"])  # two-sided: symmetric
    one = paired(y, a, np.where(np.arange(len(y)) == 0, 1, y))  # a single product apart
    assert one["a_only_right"] == 1 and one["p_value"] == 1.0  # is no evidence at all


def test_paired_mask_and_no_disagreement() -> None:
    y = np.array([0, 1, 1, 0])
    assert paired(y, y, y) == {"n": 4, "a_only_right": 0, "b_only_right": 0, "p_value": 1.0}
    r = paired(y, y, 1 - y, mask=np.array([True, True, False, False]))
    assert r["n"] == 2 and r["a_only_right"] == 2
