"""TrainConfig, AddHeadsConfig, EvaluateConfig: every option of enrich train / add-heads / evaluate declared once,
used by the command functions, their docstrings, the CLI's flags and the demo."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from typer.testing import CliRunner

from consumer.cli import app
from models.evaluate import evaluate_command
from models.heads import add_heads_command
from models.train import DEMO_CONFIG, train_command
from models.training.config import (
    EVAL_PHOTO_SHAPES,
    AddHeadsConfig,
    EvaluateConfig,
    TrainConfig,
    flag_help,
    options,
    parse_years,
)

#: each command's config and function, the docstring of which lists the config's flags
COMMANDS = [("add-heads", AddHeadsConfig, add_heads_command), ("evaluate", EvaluateConfig, evaluate_command)]


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


@pytest.mark.parametrize(("command", "config_type", "func"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_add_heads_and_evaluate_options_have_help_and_appear_in_the_docstring(command, config_type, func) -> None:
    doc = inspect.getdoc(func) or ""
    assert "{FLAGS}" not in doc
    assert {"add-heads": "returns a summary", "evaluate": "Report shape"}[command] in doc  # the rest stays
    listed = flag_help(config_type)
    for o in options(config_type):
        assert o.help.strip(), o.name
        assert o.flag in doc and o.flag in listed, o.flag
    assert "--attribute NAME (repeatable)" in listed


def test_the_configs_declare_the_command_functions_options() -> None:
    flags = {c: [o.flag for o in options(t)] for c, t, _ in COMMANDS}
    assert flags["add-heads"] == ["--bundle", "--catalog", "--out", "--attribute", "--replace", "--name",
                                  "--min-class-count", "--target-precision", "--linear-text", "--linear-c",
                                  "--mention-fusion", "--seed", "--max-products", "--work-dir", "--device",
                                  "--threads", "--progress"]
    assert flags["evaluate"] == ["--bundle", "--catalog", "--json", "--plots", "--split", "--baseline",
                                 "--strip-color-words", "--attribute", "--max-products", "--device", "--progress",
                                 "--against", "--photo-shape", "--years"]
    assert [o.name for o in options(AddHeadsConfig) if o.required] == ["bundle", "catalog", "out", "attributes"]
    assert [o.name for o in options(EvaluateConfig) if o.required] == ["bundle", "catalog"]
    assert next(o for o in options(EvaluateConfig) if o.flag == "--json").name == "json_out"
    # the defaults the signatures had
    cfg = EvaluateConfig(bundle="b", catalog="c")
    assert (cfg.split, cfg.baseline, cfg.strip_color_words, cfg.device, cfg.progress, cfg.years) == (
        "auto", True, False, "auto", True, None)
    heads = AddHeadsConfig(bundle="b", catalog="c", out="o", attributes=("motif",))
    assert heads.attributes == ["motif"] and (heads.min_class_count, heads.target_precision, heads.linear_c,
                                              heads.linear_text, heads.replace, heads.seed) == (20, 0.9, 10.0,
                                                                                                True, False, None)


def test_add_heads_and_evaluate_refuse_unknown_and_invalid_options(tmp_path) -> None:
    need = {"bundle": str(tmp_path / "b"), "catalog": str(tmp_path / "c")}
    with pytest.raises(TypeError):
        AddHeadsConfig(**need, out="o", attributes=["motif"], seeed=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):  # before any bundle is read
        add_heads_command(**need, out="o", attributes=["motif"], seeed=1)
    with pytest.raises(TypeError):
        AddHeadsConfig(**need, out="o")  # type: ignore[call-arg]  # no attributes
    with pytest.raises(TypeError):
        EvaluateConfig(**need, json="r.json")  # type: ignore[call-arg]  # the flag is --json, the field json_out
    with pytest.raises(TypeError):
        evaluate_command(**need, splitt="all")
    for bad in ({"attributes": []}, {"target_precision": 0.0}, {"min_class_count": 0}, {"linear_c": -1.0}):
        with pytest.raises(ValueError):
            AddHeadsConfig(**{**need, "out": "o", "attributes": ["motif"], **bad})
    for bad, match in (({"split": "random"}, "split"), ({"photo_shape": "round"}, "photo_shape"),
                       ({"years": "2017-2015"}, "years"), ({"years": "2012,"}, "years")):
        with pytest.raises(ValueError, match=match):
            EvaluateConfig(**need, **bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=match):  # the command refuses them before loading the bundle
            evaluate_command(**need, **bad)
    assert EvaluateConfig(**need, years="2012,2015-2016").year_set == {2012, 2015, 2016}
    assert EvaluateConfig(**need, years="").year_set is None  # no --years: every year
    assert parse_years("2013") == {2013}


def test_evaluate_photo_shapes_are_the_augment_ones() -> None:
    from models.augment import PHOTO_SHAPES

    assert EVAL_PHOTO_SHAPES == PHOTO_SHAPES


@pytest.mark.parametrize(("command", "config_type", "func"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_the_cli_help_lists_every_generated_flag(command, config_type, func) -> None:
    res = CliRunner().invoke(app, [command, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for o in options(config_type):
        assert o.flag in res.output, o.flag
        if o.type == "bool":
            assert f"--no-{o.flag[2:]}" in res.output, o.flag


def test_the_cli_refuses_an_invalid_evaluate_value_with_its_flag(tmp_path) -> None:
    for flag, value in (("--split", "random"), ("--photo-shape", "round"), ("--years", "2012-")):
        res = CliRunner().invoke(app, ["evaluate", "--bundle", str(tmp_path), "--catalog", str(tmp_path), flag, value],
                                 terminal_width=200, env={"COLUMNS": "200"})
        assert res.exit_code == 2 and f"Invalid value for {flag}" in res.output, res.output
    res = CliRunner().invoke(app, ["add-heads", "--bundle", str(tmp_path), "--catalog", str(tmp_path), "--out",
                                   str(tmp_path / "o"), "--attribute", "motif", "--target-precision", "2"])
    assert res.exit_code == 2 and "enrich add-heads: target_precision" in res.output


def test_demo_config_is_a_train_config_and_replace_keeps_the_rest() -> None:
    cfg = TrainConfig(**DEMO_CONFIG)
    assert cfg.image_size == 128 and cfg.epochs == 6
    again = cfg.replace(epochs=2)
    assert again.epochs == 2 and again.image_size == 128 and cfg.epochs == 6
    assert set(cfg.to_json()) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_backbone_registry_builds_by_name_and_refuses_unknown_or_duplicate_names() -> None:
    from models.image_model import BACKBONES, build_backbone, register_backbone

    assert set(BACKBONES) >= {"tiny", "efficientnet-lite0", "resnet50"}
    assert build_backbone("tiny", pretrained=False).name == "tiny"
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg-nope")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny", lambda pretrained, top_blocks, weights: build_backbone("tiny"))


def test_one_set_of_missing_label_values() -> None:
    from models.catalog import kaggle
    from models.taxonomy import MISSING_VALUES, Taxonomy

    assert kaggle.MISSING_VALUES is MISSING_VALUES and {"unknown", "-", "na", ""} <= MISSING_VALUES
    tax = Taxonomy.build([{"color": "Red"}, {"color": "Blue"}] * 3, ["color"], min_count=1)
    assert tax.attributes["color"].encode("Unknown") == -1 and tax.attributes["color"].encode("NA") == -1
