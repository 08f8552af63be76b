"""The demo's cached bundle is retrained when the demo configuration or training revision changes.

The training itself is replaced by a recorder here (it is exercised for real by ``tiny_bundle`` and
tests/test_models_train.py); what is under test is only the cache decision.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import models.train
from consumer.devtools.demo import ensure_demo_bundle


def test_demo_bundle_is_retrained_only_when_its_key_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def fake_train(styles: Path, out: Path) -> None:
        calls.append(out)
        (Path(out) / "manifest.json").parent.mkdir(parents=True, exist_ok=True)
        (Path(out) / "manifest.json").write_text("{}")

    monkeypatch.setattr(models.train, "train_demo_bundle", fake_train)
    styles = tmp_path / "styles.csv"
    ensure_demo_bundle(tmp_path, styles)
    assert len(calls) == 1 and (tmp_path / "demo-bundle.key").read_text().strip() == models.train.demo_bundle_key()
    ensure_demo_bundle(tmp_path, styles)
    assert len(calls) == 1  # cached
    monkeypatch.setattr(models.train, "DEMO_REVISION", models.train.DEMO_REVISION + 1)
    ensure_demo_bundle(tmp_path, styles)
    assert len(calls) == 2  # the training code changed what a demo bundle holds
    (tmp_path / "demo-bundle.key").unlink()  # a cache from before key files existed
    ensure_demo_bundle(tmp_path, styles)
    assert len(calls) == 3
