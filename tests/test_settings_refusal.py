"""A wrong configuration is refused (exit 2, every problem named, with a did-you-mean), never ignored; the
flags of `enrich run` / `check-config` / `replay` come from the Settings model and keep their documented names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from consumer.cli import app
from consumer.cli.flags import settings_flags
from consumer.ops import metrics
from consumer.ops.settings import NOT_SETTINGS, Settings, env_names

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("ENRICH_"):
            monkeypatch.delenv(key)


def _check(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["check-config", "--no-check-bundle", *args], terminal_width=200)
    return result.exit_code, result.output


def test_enrich_run_refuses_a_misspelt_variable_with_exit_2_and_a_suggestion() -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ENRICH_")}
    env["ENRICH_SHUTDOWN_GRACE"] = "5"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "consumer", "run", "--http-port", "0"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ENRICH_SHUTDOWN_GRACE: no such setting; did you mean ENRICH_SHUTDOWN_GRACE_S?" in result.stderr
    assert "starting enrich run" not in result.stdout  # refused before anything started
    assert time.monotonic() - started < 60


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("ENRICH_BATCH_IMAGE_MAX_SIZE", "ENRICH_BATCH__IMAGE_MAX_SIZE"),  # a section without its "__"
        ("ENRICH_FETCH__TOTAL_TIMEOUT", "ENRICH_FETCH__TOTAL_TIMEOUT_S"),  # an unknown key of a section
        ("ENRICH_FETCH__MAX_BYTE", "ENRICH_FETCH__MAX_BYTES"),
        ("ENRICH_INPUT_TOPIC__X", "ENRICH_INPUT_TOPIC"),  # "__" under a field that is no section
        ("ENRICH_MAX_INFLIGHT", "ENRICH_MAX_IN_FLIGHT"),
        ("enrich_group", "ENRICH_GROUP_ID"),  # pydantic-settings reads names case-insensitively: so do we
    ],
)
def test_unknown_variables_and_nested_keys_are_refused_with_a_suggestion(
    monkeypatch: pytest.MonkeyPatch, name: str, suggested: str
) -> None:
    monkeypatch.setenv(name, "64")
    code, output = _check()
    assert code == 2, output
    assert f"{name.upper()}: no such setting; did you mean {suggested}?" in output


def test_a_misspelt_secret_is_named_but_its_value_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_SASL_PASWORD", "hunter2-very-secret")
    code, output = _check()
    assert code == 2 and "did you mean ENRICH_SASL_PASSWORD?" in output
    assert "hunter2" not in output


def test_settings_itself_refuses_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything that loads Settings, not only the CLI."""
    monkeypatch.setenv("ENRICH_COMMIT_INTERVAL", "2")
    with pytest.raises(ValueError, match="commit_interval"):
        Settings()
    with pytest.raises(ValueError, match="total_timeout"):
        Settings(fetch={"total_timeout": 5})


@pytest.mark.parametrize(
    "how",
    [("-X", "fetch.max.byte=5242880"), ("--kafka", "fetch.max.byte=5242880"),
     ("env", "ENRICH_KAFKA", '{"fetch.max.byte": "5242880"}'), ("env", "ENRICH_KAFKA__fetch.max.byte", "5242880")],
)
def test_an_invalid_librdkafka_key_is_refused_by_librdkafka(monkeypatch: pytest.MonkeyPatch, how: tuple) -> None:
    args: list[str] = []
    if how[0] == "env":
        monkeypatch.setenv(how[1], how[2])
    else:
        args = list(how)
    code, output = _check(*args)
    assert code == 2, output
    assert 'No such configuration property: "fetch.max.byte"' in output


def test_run_refuses_a_bad_librdkafka_key_at_once_without_connecting() -> None:
    """A broker that does not answer (a blackhole address) must not matter: the check never connects."""
    started = time.monotonic()
    result = runner.invoke(app, ["run", "-b", "10.255.255.1:9092", "-X", "sesion.timeout.ms=6000",
                                 "-X", "fetch.max.bytes=lots"])
    assert result.exit_code == 2, result.output
    assert '"sesion.timeout.ms"' in result.output and '"fetch.max.bytes"' in result.output
    assert time.monotonic() - started < 10


def test_librdkafka_checks_the_whole_configuration_too() -> None:
    code, output = _check("-X", "acks=1")  # the producer is idempotent: librdkafka needs acks=all
    assert code == 2 and "acks" in output and "producer" in output


def test_good_librdkafka_keys_pass() -> None:
    code, output = _check("-X", "session.timeout.ms=6000", "-X", "statistics.interval.ms=500",
                          "-X", "linger.ms=10", "-X", "security.protocol=SASL_SSL")
    assert code == 0, output


def test_check_config_lists_every_problem_not_only_the_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ENRICH_SHUTDOWN_GRACE", "5")
    monkeypatch.setenv("ENRICH_FETCH__TOTAL_TIMEOUT", "5")
    monkeypatch.setenv("ENRICH_HTTP_PORT", "eighty")
    result = runner.invoke(app, ["check-config", "--bundle", str(tmp_path / "missing"), "-X", "fetch.max.byte=1"],
                           terminal_width=200)
    assert result.exit_code == 2
    out = result.output
    for expected in ("ENRICH_SHUTDOWN_GRACE: no such setting; did you mean ENRICH_SHUTDOWN_GRACE_S?",
                     "ENRICH_FETCH__TOTAL_TIMEOUT: no such setting; did you mean ENRICH_FETCH__TOTAL_TIMEOUT_S?",
                     "http_port (ENRICH_HTTP_PORT): Input should be a valid integer",
                     'No such configuration property: "fetch.max.byte"'):
        assert expected in out, out
    # with a valid configuration, the bundle is checked as before (missing: exit 1)
    for name in ("ENRICH_SHUTDOWN_GRACE", "ENRICH_FETCH__TOTAL_TIMEOUT", "ENRICH_HTTP_PORT"):
        monkeypatch.delenv(name)
    result = runner.invoke(app, ["check-config", "--bundle", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "not found" in result.output


def test_enrich_variables_that_are_not_settings_are_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in NOT_SETTINGS:
        monkeypatch.setenv(name, str(tmp_path))
    code, output = _check()
    assert code == 0, output
    assert isinstance(Settings(), Settings)


def test_every_enrich_variable_the_code_reads_is_a_setting_or_allow_listed() -> None:
    """An ENRICH_* variable read anywhere but Settings (os.environ, getenv, a typer envvar) would be refused
    at start-up unless NOT_SETTINGS lists it."""
    read = re.compile(r"""(?:environ(?:\.get)?\(|environ\[|getenv\(|envvar=)\s*["'](ENRICH_[A-Z0-9_]+)["']""")
    found = set()
    for folder in ("consumer", "models", "schemas", "tests", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            found |= set(read.findall(path.read_text(errors="replace")))
    assert "ENRICH_TEST_BUNDLE" in found  # the scan sees the reads
    assert sorted(found - set(env_names()) - set(NOT_SETTINGS)) == []


# --------------------------------------------------------------------------- flags from the settings model
def test_every_setting_is_a_flag_except_secrets() -> None:
    names = {f.name for f in settings_flags()}
    expected = {path.replace(".", "__") for path in env_names().values()} - {"fetch", "batch", "sasl_password"}
    assert names == expected


def test_the_documented_flags_still_parse(tmp_path: Path) -> None:
    code, output = _check(
        "-b", "broker-1:9092", "--input-topic", "in", "--output-topic", "out", "--dead-letter-topic", "dlq",
        "--group-id", "g", "--bundle", str(tmp_path), "--device", "cpu", "--torch-threads", "2",
        "-X", "fetch.max.bytes=5242880", "--kafka", "linger.ms=10", "--exactly-once", "--http-port", "0",
        "--max-in-flight", "24", "--allow-loopback-images", "--stale-updates", "process", "--stop-after", "5",
        "--idle-exit-s", "3", "--log-format", "console", "--log-level", "DEBUG", "--cloudevents",
        "--fetch-total-timeout-s", "4", "--batch-image-max-size", "64",
    )
    assert code == 0, output
    shown = orjson.loads(output)
    assert (shown["bootstrap_servers"], shown["input_topic"], shown["output_topic"], shown["dead_letter_topic"],
            shown["group_id"], shown["bundle"]) == ("broker-1:9092", "in", "out", "dlq", "g", str(tmp_path))
    assert shown["kafka"] == {"fetch.max.bytes": "5242880", "linger.ms": "10"}
    assert shown["exactly_once"] and shown["cloudevents"] and shown["fetch"]["allow_loopback"]
    assert (shown["device"], shown["torch_threads"], shown["http_port"], shown["max_in_flight"]) == ("cpu", 2, 0, 24)
    assert (shown["stale_updates"], shown["stop_after"], shown["idle_exit_s"]) == ("process", 5, 3.0)
    assert (shown["log_format"], shown["log_level"]) == ("console", "DEBUG")
    assert shown["fetch"]["total_timeout_s"] == 4 and shown["batch"]["image_max_size"] == 64
    assert _check("--at-least-once")[0] == 0


def test_a_nested_flag_merges_with_the_environment_and_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_FETCH__MAX_BYTES", "1000")
    monkeypatch.setenv("ENRICH_FETCH__TOTAL_TIMEOUT_S", "9")
    monkeypatch.setenv("ENRICH_KAFKA", '{"linger.ms": "7"}')
    code, output = _check("--fetch-total-timeout-s", "4", "-X", "acks=all")
    shown = orjson.loads(output)
    assert code == 0 and shown["fetch"]["max_bytes"] == 1000 and shown["fetch"]["total_timeout_s"] == 4
    assert shown["kafka"] == {"linger.ms": "7", "acks": "all"}


def test_an_invalid_flag_value_is_exit_2_naming_the_setting() -> None:
    code, output = _check("--device", "tpu")
    assert code == 2 and "device (ENRICH_DEVICE)" in output


def test_replay_and_produce_take_the_settings_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich sizes the help to the terminal, not to terminal_width
    for command in ("replay", "produce"):
        out = runner.invoke(app, [command, "--help"], terminal_width=240).output
        assert "--bootstrap-servers" in out and "--kafka" in out
    out = runner.invoke(app, ["replay", "--help"], terminal_width=240).output
    assert "--output-topic" in out and "--allow-loopback-images" in out and "--stop-after" not in out
    result = runner.invoke(app, ["replay", "--from-beginning"])  # the bundle is required (flag or ENRICH_BUNDLE)
    assert result.exit_code == 2 and "--bundle" in result.output


# --------------------------------------------------------------------------- build info
def test_build_info_revision_comes_from_the_image_or_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_GIT_REVISION", "0123abc")
    labels = metrics.set_build_info("cpu")
    assert labels["revision"] == "0123abc" and labels["device"] == "cpu" and labels["version"] != "unknown"
    monkeypatch.delenv("ENRICH_GIT_REVISION")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert metrics.git_revision() == (head.stdout.strip() if head.returncode == 0 else "unknown")


def test_demo_refuses_a_misspelt_variable_before_starting_anything(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("ENRICH_SHUTDOWN_GRACE", "5")
    result = runner.invoke(app, ["demo", "--cache-dir", str(tmp_path / "cache")], terminal_width=200)
    assert result.exit_code == 2
    assert "ENRICH_SHUTDOWN_GRACE: no such setting; did you mean ENRICH_SHUTDOWN_GRACE_S?" in result.output
    assert not (tmp_path / "cache").exists()  # no catalog generated, no bundle trained, no broker started
