"""Probe semantics: liveness is the poll loop's turns and the inference thread's progress; readiness is model
loaded + partitions."""

from __future__ import annotations

import time

from consumer.ops.health import HealthState


def test_liveness_follows_the_heartbeat() -> None:
    state = HealthState(liveness_timeout_s=0.05)
    state.beat()
    assert state.live()[0]
    time.sleep(0.1)
    ok, why = state.live()
    assert not ok and "poll loop" in why


def test_liveness_fails_when_inference_sits_on_one_batch() -> None:
    state = HealthState(liveness_timeout_s=0.05)
    state.inference(True)
    state.beat()
    assert state.live()[0]
    time.sleep(0.1)
    state.beat()  # the poll loop keeps turning, but the model is stuck
    ok, why = state.live()
    assert not ok and "inference" in why
    state.inference(False)
    assert state.live()[0]


def test_readiness_needs_model_and_partitions_and_not_stopping() -> None:
    state = HealthState()
    assert state.ready() == (False, "model bundle not loaded yet")
    state.model_loaded = True
    assert state.ready() == (False, "no partitions assigned")
    state.assigned_partitions = 3
    assert state.ready()[0]
    state.stopping = True
    assert state.ready() == (False, "shutting down")
