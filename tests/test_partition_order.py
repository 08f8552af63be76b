"""Latest wins per product, as a property: over random interleavings of versions, deletes and completion
delays, the last output per product is its newest input (by ``updated_at``, then offset), in both modes,
and every offset completes exactly once (an output or a documented skip)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.stages.events import SourceCoordinates
from consumer.stages.outputs import DeadLetter, Enriched, Skipped, Tombstone
from consumer.stream.partition import Entry, PartitionState

T0 = datetime(2026, 1, 1, tzinfo=UTC)

inputs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", None]),  # None: an invalid event (dead letter, no product)
        st.sampled_from(["upsert", "upsert", "delete"]),
        st.integers(min_value=0, max_value=5),  # updated_at step: equal and older timestamps included
    ),
    min_size=1,
    max_size=40,
)


def _simulate(events, actions, *, ordered_by_offset: bool, monotonic: bool):
    state = PartitionState(("t", 0), ordered_by_offset=ordered_by_offset)
    produced: list[Entry] = []  # in the order handed to the producer (Kafka keeps it per key)
    unfinished: list[Entry] = []
    undelivered: list[Entry] = []
    newest: dict[str, tuple[datetime, int]] = {}
    expected_last: dict[str, tuple[str, int]] = {}
    step = 0

    def admit(i: int) -> None:
        nonlocal step
        product, op, delta = events[i]
        entry = Entry(SourceCoordinates("t", 0, i), b"raw", product)
        if product is None:
            state.admit(entry, None)
            state.set_output(entry, DeadLetter(None, b"dl", "not_json"))
        else:
            step = step + delta if monotonic else delta
            updated_at = T0 + timedelta(seconds=step)
            state.admit(entry, updated_at)
            key = (updated_at, i)
            if product not in newest or updated_at >= newest[product][0]:
                newest[product] = key
                expected_last[product] = (op, i)
            if entry.output is None:
                unfinished.append(entry)
                entry.raw = op.encode()
        for released in state.releasable(entry):
            produced.append(released)
            undelivered.append(released)

    def finish(entry: Entry) -> None:
        op = (entry.raw or b"upsert").decode()
        output = Tombstone(entry.product) if op == "delete" else Enriched(entry.product, b"{}")
        if state.set_output(entry, output):
            for released in state.releasable(entry):
                produced.append(released)
                undelivered.append(released)

    nxt = 0
    for choice in actions:
        if choice == 0 and nxt < len(events):
            admit(nxt)
            nxt += 1
        elif choice == 1 and unfinished:
            finish(unfinished.pop(len(unfinished) // 2))
        elif choice == 2 and undelivered:
            state.delivered(undelivered.pop(0))
    while nxt < len(events):
        admit(nxt)
        nxt += 1
    while unfinished:
        finish(unfinished.pop())
    while undelivered:
        state.delivered(undelivered.pop(0))
    return state, produced, expected_last


@settings(max_examples=400, deadline=None)
@given(events=inputs, actions=st.lists(st.integers(0, 2), max_size=120), ordered=st.booleans(),
       monotonic=st.booleans())
def test_last_output_per_product_is_its_newest_input(events, actions, ordered, monotonic) -> None:
    state, produced, expected_last = _simulate(events, actions, ordered_by_offset=ordered, monotonic=monotonic)
    last: dict[str, Entry] = {}
    for entry in produced:
        if entry.product is not None:
            last[entry.product] = entry
    for product, (op, offset) in expected_last.items():
        assert last[product].offset == offset
        assert isinstance(last[product].output, Tombstone if op == "delete" else Enriched)
    # every offset is complete, each once: the commit point is the end of the stream
    assert state.in_flight == 0 and state.offsets.committable() == len(events)
    assert len({e.offset for e in produced}) == len(produced)
    if ordered:  # exactly-once order: offsets leave strictly increasing
        assert [e.offset for e in produced] == sorted(e.offset for e in produced)


def test_older_version_in_flight_is_superseded_and_a_delete_is_never_overtaken() -> None:
    state = PartitionState(("t", 0))
    slow = Entry(SourceCoordinates("t", 0, 0), b"", "p")
    state.admit(slow, T0)
    delete = Entry(SourceCoordinates("t", 0, 1), b"", "p")
    assert state.admit(delete, T0 + timedelta(seconds=1)) == [slow]
    assert slow.output == Skipped("superseded")
    assert state.set_output(delete, Tombstone("p"))
    assert list(state.releasable(delete)) == [delete]
    # the slow upsert finishing late changes nothing
    assert not state.set_output(slow, Enriched("p", b"{}"))
    assert list(state.releasable(slow)) == []


def test_stale_update_is_skipped_or_processed_by_policy() -> None:
    for process, expected in ((False, Skipped("stale_update")), (True, None)):
        state = PartitionState(("t", 0), process_stale=process)
        state.admit(Entry(SourceCoordinates("t", 0, 0), b"", "p"), T0 + timedelta(days=1))
        older = Entry(SourceCoordinates("t", 0, 1), b"", "p")
        state.admit(older, T0)
        assert older.output == expected


def test_a_closed_state_ignores_late_results() -> None:
    state = PartitionState(("t", 0))
    entry = Entry(SourceCoordinates("t", 0, 0), b"", "p")
    state.admit(entry, T0)
    state.close()
    assert not state.set_output(entry, Enriched("p", b"{}"))
    assert list(state.releasable()) == []
    state.delivered(entry)
    assert state.in_flight == 1  # nothing completes after close: the new owner redoes it
