"""Go ai-proxy settings: Go durations, retry values clamped as Go ran them, ./config.yaml."""

from __future__ import annotations

import logging
import math
import textwrap
from pathlib import Path

import pytest

from app.config import (
    ConfigError,
    RetryConfig,
    clamp_retry,
    load_config,
    parse_duration,
    parse_go_duration,
)


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def load(env: dict, text: str = "models: []\n", tmp_path: Path | None = None):
    path = write(tmp_path / "conf.yaml", text) if tmp_path else None
    overrides = None if path else {"models": [], "default_model": None}
    return load_config(path, env=env, overrides=overrides)


# --- Go durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1m30s", 90.0),
        ("300us", 0.0003),
        ("300µs", 0.0003),  # U+00B5
        ("300μs", 0.0003),  # U+03BC
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("1h2m3s", 3723.0),
        ("500ms", 0.5),
        ("10ns", 1e-8),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("+2s", 2.0),
        ("-1s", -1.0),
        ("-1m30s", -90.0),
        ("0", 0.0),
        ("-0", 0.0),
        ("2", 2.0),  # plain seconds, as this proxy always took them
        ("0.25", 0.25),
        (" 2s ", 2.0),
        (3, 3.0),
        (1.5, 1.5),
    ],
)
def test_go_durations(value, seconds):
    assert math.isclose(parse_go_duration(value), seconds, abs_tol=1e-12)


@pytest.mark.parametrize(
    "value",
    ["", "s", "1d", "1 parsec", "fast", "--1s", "1s-", ".s", "1e3s", "1.2.3s", "-", "1m 30", True],
)
def test_bad_go_durations(value):
    with pytest.raises(ValueError):
        parse_go_duration(value)


def test_a_duration_past_go_range_does_not_parse():
    with pytest.raises(ValueError):
        parse_go_duration("3000000h")  # past int64 nanoseconds, as time.ParseDuration says


def test_parse_duration_still_refuses_negatives():
    with pytest.raises(ValueError):
        parse_duration("-1s")
    assert parse_duration("1m30s") == 90.0


@pytest.mark.parametrize(
    ("env", "base", "top"),
    [
        ({"RETRY_BASE_DELAY": "1m30s", "RETRY_MAX_DELAY": "2h45m"}, 90.0, 9900.0),
        ({"RETRY_BASE_DELAY": "300us", "RETRY_MAX_DELAY": "1.5h"}, 0.0003, 5400.0),
        ({"RETRY_BASE_DELAY": "0", "RETRY_MAX_DELAY": "0"}, 0.0, 0.0),
        ({"RETRY_BASE_DELAY": "250ms"}, 0.25, 30.0),
    ],
)
def test_go_durations_in_retry_env(env, base, top):
    retry = load(env).retry
    assert math.isclose(retry.base_delay, base) and math.isclose(retry.max_delay, top)


def test_go_durations_in_retry_yaml(tmp_path):
    retry = load({}, "retry: {base_delay: 1m30s, max_delay: 2h45m}\n", tmp_path).retry
    assert (retry.base_delay, retry.max_delay) == (90.0, 9900.0)


# --- out-of-range retry values: clamped with a warning, not fatal ---------------------------------


@pytest.mark.parametrize(
    ("env", "expected", "named"),
    [
        ({"RETRY_MAX_RETRIES": "-1"}, {"max_retries": 0}, ["RETRY_MAX_RETRIES"]),
        ({"RETRY_MAX_RETRIES": "-100"}, {"max_retries": 0}, ["RETRY_MAX_RETRIES"]),
        ({"RETRY_MAX_RETRIES": "1000"}, {"max_retries": 20}, ["RETRY_MAX_RETRIES"]),
        ({"RETRY_JITTER": "1.5"}, {"jitter": 1.0}, ["RETRY_JITTER"]),
        ({"RETRY_JITTER": "-0.2"}, {"jitter": 0.0}, ["RETRY_JITTER"]),
        ({"RETRY_JITTER": "1e3"}, {"jitter": 1.0}, ["RETRY_JITTER"]),
        ({"RETRY_BASE_DELAY": "-1s"}, {"base_delay": 0.0}, ["RETRY_BASE_DELAY"]),
        (
            {"RETRY_MAX_DELAY": "-5s"},
            {"base_delay": 0.0, "max_delay": 0.0},
            ["RETRY_MAX_DELAY", "retry.base_delay"],  # negative, then below base_delay
        ),
        (
            {"RETRY_BASE_DELAY": "10s", "RETRY_MAX_DELAY": "2s"},
            {"base_delay": 2.0, "max_delay": 2.0},
            ["RETRY_BASE_DELAY"],
        ),
        (
            {"RETRY_BASE_DELAY": "1m", "RETRY_MAX_RETRIES": "-3", "RETRY_JITTER": "7"},
            {"base_delay": 30.0, "max_retries": 0, "jitter": 1.0},
            ["RETRY_MAX_RETRIES", "RETRY_BASE_DELAY", "RETRY_JITTER"],
        ),
    ],
)
def test_out_of_range_retry_env_is_clamped_with_a_warning(env, expected, named, caplog):
    with caplog.at_level(logging.WARNING, logger="app.config"):
        config = load(env)
    retry = config.retry
    for key, value in expected.items():
        assert getattr(retry, key) == value, key
    assert len(config.warnings) == len(named)
    for name, warning in zip(named, config.warnings, strict=True):
        assert warning.startswith(name + ":"), warning
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert logged == list(config.warnings)


@pytest.mark.parametrize(
    ("text", "expected", "named"),
    [
        ("retry: {max_retries: -1}", {"max_retries": 0}, "retry.max_retries"),
        ("retry: {max_retries: 99}", {"max_retries": 20}, "retry.max_retries"),
        ("retry: {jitter: 2}", {"jitter": 1.0}, "retry.jitter"),
        ("retry: {jitter: -1}", {"jitter": 0.0}, "retry.jitter"),
        ("retry: {base_delay: -2s}", {"base_delay": 0.0}, "retry.base_delay"),
        ("retry: {base_delay: 1m, max_delay: 5s}", {"base_delay": 5.0}, "retry.base_delay"),
    ],
)
def test_out_of_range_retry_yaml_is_clamped_with_a_warning(tmp_path, text, expected, named):
    config = load({}, text + "\n", tmp_path)
    for key, value in expected.items():
        assert getattr(config.retry, key) == value, key
    assert len(config.warnings) == 1 and config.warnings[0].startswith(named + ":")


def test_in_range_retry_values_give_no_warning():
    config = load(
        {
            "RETRY_MAX_RETRIES": "0",
            "RETRY_BASE_DELAY": "0",
            "RETRY_MAX_DELAY": "0",
            "RETRY_JITTER": "1",
        }
    )
    assert config.retry == RetryConfig(max_retries=0, base_delay=0.0, max_delay=0.0, jitter=1.0)
    assert config.warnings == ()


def test_clamp_retry_keeps_good_values():
    retry = RetryConfig(max_retries=3, base_delay=1.0, max_delay=30.0, jitter=0.1)
    assert clamp_retry(retry) == (retry, [])


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RETRY_MAX_RETRIES", "x"),
        ("RETRY_MAX_RETRIES", "2.5"),
        ("RETRY_MAX_RETRIES", "1_0"),
        ("RETRY_MAX_RETRIES", "3 retries"),
        ("RETRY_JITTER", "x"),
        ("RETRY_JITTER", "nan"),
        ("RETRY_JITTER", "inf"),
        ("RETRY_JITTER", "1_0"),
        ("RETRY_BASE_DELAY", "soon"),
        ("RETRY_BASE_DELAY", "1d"),
        ("RETRY_MAX_DELAY", "5 minutes"),
        ("RETRY_MAX_DELAY", "--1s"),
    ],
)
def test_unparseable_retry_env_stops_start_up_naming_it(name, value):
    with pytest.raises(ConfigError) as info:
        load({name: value})
    assert info.value.problems and all(p.startswith(name + ":") for p in info.value.problems)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("retry: {base_delay: soon}", "retry.base_delay"),
        ("retry: {max_delay: 1d}", "retry.max_delay"),
        ("retry: {max_retries: many}", "retry.max_retries"),
        ("retry: {jitter: lots}", "retry.jitter"),
        ("retry: {jitter: .nan}", "retry.jitter"),
    ],
)
def test_unparseable_retry_yaml_stops_start_up_naming_it(tmp_path, text, path):
    with pytest.raises(ConfigError) as info:
        load({}, text + "\n", tmp_path)
    assert any(p.startswith(path + ":") for p in info.value.problems), info.value.problems


# --- ./config.yaml, where the Go proxy reads its config ----------------------------------------


GO_CONFIG = """\
models:
  - name: go-echo
    provider: echo
    max_request_length: 1000
    model_size: SMALL
"""


def test_config_yaml_in_the_working_directory_is_used_with_a_line(tmp_path, caplog):
    (tmp_path / "config.yaml").write_text(GO_CONFIG)
    with caplog.at_level(logging.INFO, logger="app.config"):
        config = load_config(env={})
    assert [m.name for m in config.models] == ["go-echo"]
    assert config.source == "config.yaml"
    lines = [r.getMessage() for r in caplog.records if "config.yaml" in r.getMessage()]
    assert len(lines) == 1 and "Go" in lines[0]


@pytest.mark.parametrize("how", ["argument", "AI_PROXY_CONFIG"])
def test_a_named_config_wins_over_config_yaml(tmp_path, caplog, how):
    (tmp_path / "config.yaml").write_text(GO_CONFIG)
    named = write(tmp_path / "named.yaml", "models: [{name: named, provider: echo}]\n")
    with caplog.at_level(logging.INFO, logger="app.config"):
        if how == "argument":
            config = load_config(named, env={})
        else:
            config = load_config(env={"AI_PROXY_CONFIG": named})
    assert [m.name for m in config.models] == ["named"]
    assert not [r for r in caplog.records if "Go ai-proxy" in r.getMessage()]


def test_without_config_yaml_the_default_is_used_silently(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="app.config"):
        config = load_config(env={})
    assert {m.name for m in config.models} == {"echo", "echo-large"}
    assert not [r for r in caplog.records if "Go ai-proxy" in r.getMessage()]


def test_a_config_yaml_directory_is_not_a_config(tmp_path):
    (tmp_path / "config.yaml").mkdir()
    config = load_config(env={})
    assert {m.name for m in config.models} == {"echo", "echo-large"}
