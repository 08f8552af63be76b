"""The chaos scenarios under pytest: the short versions run in `make test`; the full ones are marked
``chaos`` and only run when selected (`make chaos`, i.e. ``pytest -m chaos``)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "chaos" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="full chaos scenario: `make chaos` (pytest -m chaos)")
    for item in items:
        if item.get_closest_marker("chaos") is not None:
            item.add_marker(skip)
