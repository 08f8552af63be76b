"""The chaos scenarios as pytest tests. Short versions (a few faults over a few hundred events) run in
`make test`; the full ones (``chaos`` marker) in `make chaos`. Each prints its figures line ([chaos] ...)."""

from __future__ import annotations

import signal

import pytest

from tests.chaos.common import Figures, Rig
from tests.chaos.crash_loop import kill_loop

pytestmark = pytest.mark.broker


@pytest.fixture
def rig(broker, image_server, sample_catalog, tiny_bundle, tmp_path) -> Rig:
    return Rig(broker, image_server, sample_catalog, tiny_bundle, tmp_path)


def _check(fig: Figures, *, zero_duplicates: bool = False) -> None:
    print("\n" + fig.line())
    assert fig.verdict(zero_duplicates=zero_duplicates) == []


# ------------------------------------------------------------------------------------ short (make test)
def test_crash_loop_short(rig: Rig) -> None:
    _check(kill_loop(rig, kills=3, events=300, max_gap_s=3.0))


def test_clean_stops_short(rig: Rig) -> None:
    _check(kill_loop(rig, kills=2, events=200, sig=signal.SIGTERM, max_gap_s=3.0), zero_duplicates=True)


# ------------------------------------------------------------------------------------ full (make chaos)
@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_crash_loop(rig: Rig) -> None:
    _check(kill_loop(rig, kills=20, events=3000))


@pytest.mark.chaos
@pytest.mark.timeout(1200)
def test_clean_stops(rig: Rig) -> None:
    _check(kill_loop(rig, kills=10, events=1500, sig=signal.SIGTERM, seed=12), zero_duplicates=True)


@pytest.mark.chaos
@pytest.mark.timeout(1800)
def test_exactly_once_crash_loop(rig: Rig) -> None:
    fig = kill_loop(rig, kills=12, events=1500, exactly_once=True, seed=13)
    _check(fig, zero_duplicates=True)
    assert fig.notes["set_equal"]
