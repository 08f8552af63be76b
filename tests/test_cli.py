"""The `enrich` command line: every command answers --help, configuration is validated and masked."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from typer.testing import CliRunner

from consumer.cli import app
from consumer.ops.settings import Settings

runner = CliRunner()
COMMANDS = ["run", "demo", "broker", "produce", "train", "add-heads", "evaluate", "check-config", "sample-catalog"]


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output) > 200


def test_run_help_names_the_kafka_flags_and_env_vars() -> None:
    out = runner.invoke(app, ["run", "--help"], terminal_width=240).output
    for flag in (
        "--bootstrap-servers",
        "--input-topic",
        "--output-topic",
        "--dead-letter-topic",
        "--group-id",
        "--bundle",
        "ENRICH_INPUT_TOPIC",
        "ENRICH_GROUP_ID",
    ):
        assert flag in out


def test_python_dash_m_consumer_is_the_same_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "consumer", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "check-config" in result.stdout


def test_check_config_masks_secrets_and_applies_env_and_flags(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ENRICH_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ENRICH_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("ENRICH_SASL_USERNAME", "enrich")
    monkeypatch.setenv("ENRICH_SASL_PASSWORD", "hunter2-very-secret")
    monkeypatch.setenv("ENRICH_FETCH__TOTAL_TIMEOUT_S", "5")
    monkeypatch.setenv("ENRICH_GROUP_ID", "from-env")
    result = runner.invoke(
        app, ["check-config", "--no-check-bundle", "--bundle", str(tmp_path), "--group-id", "from-flag",
              "-X", "ssl.key.password=k3y"]
    )
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "k3y" not in result.output
    shown = orjson.loads(result.output)
    assert shown["group_id"] == "from-flag"  # flags win over the environment
    assert shown["fetch"]["total_timeout_s"] == 5
    assert shown["sasl_password"] == "**********"


def test_check_config_rejects_invalid_configuration(monkeypatch) -> None:
    monkeypatch.setenv("ENRICH_INPUT_TOPIC", "same")
    monkeypatch.setenv("ENRICH_OUTPUT_TOPIC", "same")
    result = runner.invoke(app, ["check-config", "--no-check-bundle"])
    assert result.exit_code == 2
    assert "three different topics" in result.output


def test_check_config_reports_a_missing_bundle(tmp_path) -> None:
    result = runner.invoke(app, ["check-config", "--bundle", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "not found" in result.output


def test_bad_kafka_passthrough_is_a_usage_error() -> None:
    result = runner.invoke(app, ["check-config", "--no-check-bundle", "-X", "no-equals-sign"])
    assert result.exit_code == 2


def test_settings_repr_never_shows_secrets() -> None:
    settings = Settings(sasl_password="s3cret", kafka={"sasl.password": "s3cret2"})
    assert "s3cret" not in repr(settings)
    assert "s3cret" not in str(settings.redacted())
    assert settings.kafka_common()["sasl.password"] == "s3cret2"  # passthrough wins, for the client only


def test_run_with_a_missing_bundle_exits_1_with_a_clear_log_line(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "consumer", "run", "--bundle", str(tmp_path / "missing"), "--http-port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    fatal = [orjson.loads(line) for line in result.stdout.splitlines() if '"fatal error"' in line]
    assert fatal and "manifest.json" in fatal[0]["error"]


def test_train_refuses_a_negative_augment_count(tmp_path) -> None:
    result = runner.invoke(app, ["train", "--catalog", str(tmp_path / "styles.csv"), "--out", str(tmp_path / "b"),
                                 "--image-augment", "-1"], terminal_width=200)
    assert result.exit_code == 2 and "--image-augment" in result.output
    assert not (tmp_path / "b").exists()
