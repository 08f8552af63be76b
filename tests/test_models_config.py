"""TrainConfig: every training option declared once, used by train_command, its docstring and the demo."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from models.train import DEMO_CONFIG, train_command
from models.training.config import TrainConfig, flag_help, options


def test_every_option_has_help_and_appears_in_the_docstring() -> None:
    doc = inspect.getdoc(train_command) or ""
    for o in options():
        assert o.help.strip(), o.name
        assert o.flag in doc, o.flag
    assert "{FLAGS}" not in doc
    assert "--attribute TEXT (repeatable)" in flag_help() and "--linear-text/--no-linear-text" in flag_help()


def test_unknown_and_invalid_options_are_refused() -> None:
    with pytest.raises(TypeError):
        TrainConfig(epochz=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        train_command(catalog=["x"], out="y", epochz=3)
    for bad in ({"image_augment": -1}, {"split": "random"}, {"select_by": "f1"}, {"split_years": "2016,2013"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)  # type: ignore[arg-type]


def test_demo_config_is_a_train_config_and_replace_keeps_the_rest() -> None:
    cfg = TrainConfig(**DEMO_CONFIG)
    assert cfg.image_size == 128 and cfg.epochs == 6
    again = cfg.replace(epochs=2)
    assert again.epochs == 2 and again.image_size == 128 and cfg.epochs == 6
    assert set(cfg.to_json()) == {f.name for f in dataclasses.fields(TrainConfig)}
