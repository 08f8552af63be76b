"""Per-member settings: exactly-once replicas must never share a transactional.id (they fence each other)."""

from __future__ import annotations

import socket

import pytest

from consumer.ops.settings import Settings
from consumer.stream.processor import producer_config


def test_transactional_id_is_unique_per_member(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "enrich-7d9f-abcde")
    a = producer_config(Settings(exactly_once=True, group_id="enrich"))["transactional.id"]
    monkeypatch.setenv("POD_NAME", "enrich-7d9f-fghij")
    b = producer_config(Settings(exactly_once=True, group_id="enrich"))["transactional.id"]
    assert a == "enrich-enrich-7d9f-abcde" and b == "enrich-enrich-7d9f-fghij"
    monkeypatch.delenv("POD_NAME")
    assert Settings(group_id="g").member_transactional_id() == f"g-{socket.gethostname()}"
    assert Settings(transactional_id="fixed").member_transactional_id() == "fixed"  # an explicit id wins


def test_no_transactional_id_in_at_least_once_mode() -> None:
    assert "transactional.id" not in producer_config(Settings())


def test_dead_letters_fit_the_configured_message_size() -> None:
    from consumer.stages.events import DEAD_LETTER_ENVELOPE_BYTES, original_budget

    assert original_budget(1_000_000) == 512 * 1024
    small = original_budget(200_000)
    assert small * 4 // 3 + DEAD_LETTER_ENVELOPE_BYTES + 2048 <= 200_000
    assert original_budget(10_000) == 0
