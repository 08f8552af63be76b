from __future__ import annotations

import pytest

from consumer.stream.dlq import DeadLetterPolicy, DeadLetterRateExceeded


def test_isolated_dead_letters_are_fine() -> None:
    policy = DeadLetterPolicy(max_fraction=0.5, window=10)
    for i in range(100):
        policy.record(i % 4 == 0)  # 25 % dead letters
    assert 0.2 <= policy.fraction <= 0.3


def test_mostly_failing_input_stops_loudly() -> None:
    policy = DeadLetterPolicy(max_fraction=0.5, window=10)
    with pytest.raises(DeadLetterRateExceeded, match="of the last 10 events were dead-lettered"):
        for _ in range(10):
            policy.record(True)


def test_window_must_fill_before_judging() -> None:
    policy = DeadLetterPolicy(max_fraction=0.5, window=10)
    for _ in range(9):
        policy.record(True)  # a fresh consumer meeting a few bad events first does not stop
    assert policy.fraction == 1.0
