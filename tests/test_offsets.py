"""Property tests of a partition's offsets: never commit past an incomplete offset, and reach the end."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.stream.offsets import PartitionOffsets


def test_slow_early_offset_holds_back_commit() -> None:
    offsets = PartitionOffsets()
    for offset in range(5):
        offsets.track(offset)
    for offset in (1, 2, 3, 4):
        offsets.complete(offset)
    assert offsets.committable() == 0
    offsets.complete(0)
    assert offsets.committable() == 5
    offsets.mark_committed(5)
    assert offsets.committable() is None


def test_offsets_must_increase() -> None:
    offsets = PartitionOffsets()
    offsets.track(3)
    with pytest.raises(ValueError):
        offsets.track(3)


def test_nothing_to_commit_before_the_first_message() -> None:
    offsets = PartitionOffsets()
    assert offsets.committable() is None and offsets.in_flight == 0


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
    tracker = PartitionOffsets()
    for offset in offsets:
        tracker.track(offset)
    order = data.draw(st.permutations(offsets))
    completed: set[int] = set()
    last_commit = None
    for offset in order:
        tracker.complete(offset)
        completed.add(offset)
        point = tracker.committable()
        if point is not None:
            # Everything below the commit point is complete; the first incomplete offset is not passed.
            assert all(o in completed for o in offsets if o < point)
            assert last_commit is None or point > last_commit
            tracker.mark_committed(point)
            last_commit = point
    assert tracker.in_flight == 0
    assert last_commit == offsets[-1] + 1
