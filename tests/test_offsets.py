"""Property tests of the offset tracker: never commit past an incomplete offset, and reach the end."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.offsets import OffsetTracker

TP = ("products", 0)


def test_slow_early_offset_holds_back_commit() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.track(TP, offset)
    for offset in (1, 2, 3, 4):
        tracker.complete(TP, offset)
    assert tracker.committable() == {TP: 0}
    tracker.complete(TP, 0)
    assert tracker.committable() == {TP: 5}
    tracker.mark_committed({TP: 5})
    assert tracker.committable() == {}


def test_offsets_must_increase() -> None:
    tracker = OffsetTracker()
    tracker.track(TP, 3)
    with pytest.raises(ValueError):
        tracker.track(TP, 3)


def test_forgotten_partition_ignores_late_completion() -> None:
    tracker = OffsetTracker()
    tracker.track(TP, 0)
    tracker.forget(TP)
    tracker.complete(TP, 0)
    assert tracker.committable() == {}
    assert tracker.in_flight() == 0


@settings(max_examples=300, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=60),
    data=st.data(),
)
def test_commit_never_passes_an_incomplete_offset(gaps: list[int], data: st.DataObject) -> None:
    offsets, current = [], 10
    for gap in gaps:
        offsets.append(current)
        current += gap
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.track(TP, offset)
    order = data.draw(st.permutations(offsets))
    completed: set[int] = set()
    last_commit = None
    for offset in order:
        tracker.complete(TP, offset)
        completed.add(offset)
        point = tracker.committable().get(TP)
        if point is not None:
            # Everything below the commit point is complete; the first incomplete offset is not passed.
            assert all(o in completed for o in offsets if o < point)
            assert last_commit is None or point > last_commit
            tracker.mark_committed({TP: point})
            last_commit = point
    assert tracker.in_flight() == 0
    assert last_commit == offsets[-1] + 1
