"""Config loading: interpolation, environment overrides, validation with paths."""

from __future__ import annotations

import os
import textwrap

import pytest

from app.config import (
    ConfigError,
    hash_token,
    load_config,
    load_env_file,
    parse_duration,
)


def write(tmp_path, text: str, name: str = "config.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def problems_of(path, env=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value.problems


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1m", 60.0), ("1.5", 1.5), (3, 3.0), ("1h", 3600.0)],
)
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["fast", "-1s", "1 parsec", True])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_interpolation_and_defaults(tmp_path):
    path = write(
        tmp_path,
        """
        default_model: ${DEFAULT:-echo}
        models:
          - name: echo
            provider: echo
          - name: gpt
            base_url: ${BASE}/v1
            token: ${KEY}
            requests_per_minute: ${RPM:-20}
        """,
    )
    config = load_config(path, env={"BASE": "https://example.test", "KEY": "sk-1"})
    gpt = config.models[1]
    assert config.default_model == "echo"
    assert gpt.base_url == "https://example.test/v1"
    assert gpt.token == "sk-1"
    assert gpt.requests_per_minute == 20
    assert gpt.provider == "openai"  # no provider means OpenAI-compatible
    assert gpt.upstream_model() == "gpt"


def test_model_with_unset_key_is_left_out(tmp_path):
    path = write(
        tmp_path,
        """
        models:
          - name: echo
            provider: echo
          - name: groq/llama
            provider: groq
            token: ${GROQ_API_KEY}
        """,
    )
    config = load_config(path, env={})
    assert [m.name for m in config.models] == ["echo"]
    assert len(config.left_out) == 1 and "models[1]" in config.left_out[0]
    # An empty variable (a copied env.example) counts as unset too.
    assert len(load_config(path, env={"GROQ_API_KEY": ""}).models) == 1
    assert len(load_config(path, env={"GROQ_API_KEY": "gsk"}).models) == 2


def test_every_problem_is_reported_with_its_path(tmp_path):
    path = write(
        tmp_path,
        """
        models:
          - name: ok
            provider: echo
          - name: bad-url
            url: ftp://nope
          - name: bad-limit
            provider: echo
            requests_per_minute: lots
            kindd: chat
        routing:
          strategy: random
        """,
    )
    problems = problems_of(path)
    joined = "\n".join(problems)
    assert "models[1].url: must be an http:// or https:// URL" in joined
    assert "models[2].requests_per_minute: Not a valid integer." in joined
    assert "models[2].kindd: Unknown field." in joined
    assert "routing.strategy: Must be one of" in joined
    assert len(problems) == 4


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models: [{name: a, provider: echo}]\naliases: {fast: [nope]}", "aliases.fast[0]"),
        ("models: [{name: a, provider: echo}]\ndefault_model: missing", "default_model"),
        (
            "auth: {tokens: [{name: x, token: a}, {name: x, token: b}]}",
            "auth.tokens: the name 'x' is used twice",
        ),
        ("auth: {tokens: [{name: x}]}", "auth.tokens[0].token: set exactly one"),
        ("auth: {tokens: [{name: x, token_sha256: abc}]}", "auth.tokens[0].token_sha256"),
        ("server: {max_body_bytes: 10}", "server.max_body_bytes"),
        ("models: {name: a}", "models: Not a valid list."),
        ("- just a list", "the top level must be a mapping"),
        ("models: [\n  {name: a", "line"),
    ],
)
def test_faults(tmp_path, text, expected):
    path = write(tmp_path, text + "\n")
    assert any(expected in p for p in problems_of(path)), problems_of(path)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        (
            "auth: {tokens: [{name: x, token: sk-a-token-1, requests_per_minute: 0.5}]}",
            "auth.tokens[0].requests_per_minute",
        ),
        (
            "auth: {tokens: [{name: x, token: sk-a-token-1, tokens_per_minute: 99.9}]}",
            "auth.tokens[0].tokens_per_minute",
        ),
        (
            "models: [{name: a, provider: echo, requests_per_day: 1.5}]",
            "models[0].requests_per_day",
        ),
        ("models: [{name: a, provider: echo, priority: 1.7}]", "models[0].priority"),
        ("routing: {failure_threshold: 2.5}", "routing.failure_threshold"),
        ("server: {max_body_bytes: 100000.5}", "server.max_body_bytes"),
        ("rate_limits: {default_reserve_tokens: 10.25}", "rate_limits.default_reserve_tokens"),
    ],
)
def test_a_whole_number_with_a_fraction_is_refused_not_cut(tmp_path, text, path):
    """`requests_per_minute: 0.5` was read as 0, which is no limit at all."""
    problems = problems_of(write(tmp_path, text + "\n"))
    assert any(p.startswith(f"{path}: Not a valid integer") for p in problems), problems


M = "models: [{name: m, provider: openai, token: sk-x-123456789, "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (M + "base_url: 'http://h:99999/v1'}]", "models[0].base_url: must be an http"),
        (M + "base_url: 'http://h:abc/v1'}]", "models[0].base_url: must be an http"),
        (M + "base_url: 'http://a b/v1'}]", "models[0].base_url: must be an http"),
        (M + "base_url: 'http://[::1/v1'}]", "models[0].base_url: must be an http"),
        (M + "base_url: 'http://h/v1 trailing'}]", "models[0].base_url: must be an http"),
        (M + "url: 'http://h:70000/v1/chat/completions'}]", "models[0].url: must be an http"),
        # The adapter appends its paths: a query or fragment never reached the provider.
        (M + "base_url: 'http://h/v1?api-version=1'}]", "models[0].base_url: must not hold a"),
        (M + "base_url: 'http://h/v1#x'}]", "models[0].base_url: must not hold a query"),
        (M + "base_url: 'http://h/v1?'}]", "models[0].base_url: must not hold a query"),
        (M + 'base_url: "http://h/v1", headers: {X: "a\\nb"}}]', "models[0].headers: the value"),
        (M + 'base_url: "http://h/v1", headers: {"X Y": v}}]', "models[0].headers: 'X Y'"),
        (M + 'base_url: "http://h/v1", headers: {X: "a\\0b"}}]', "models[0].headers: the value"),
        (
            M + "base_url: 'http://h/v1', http_client_config: {timeout_seconds: 1e308}}]",
            "models[0].http_client_config.timeout_seconds",
        ),
        ("routing: {cooldown_seconds: 1e308}", "routing.cooldown_seconds"),
        ("routing: {stream_timeout_seconds: 1e308}", "routing.stream_timeout_seconds"),
    ],
)
def test_values_no_request_could_use_stop_start_up(tmp_path, text, expected):
    """Each was accepted and failed every request later: a port past 65535, a header value with
    a line break (502 and a cooldown on every request), a timeout no socket can take."""
    problems = problems_of(write(tmp_path, text + "\n"))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    "url",
    ["https://user:pass@api.example.com/v1", "http://127.0.0.1:8080/v1", "http://[::1]:8080/v1"],
)
def test_urls_that_work_still_load(tmp_path, url):
    (model,) = load_config(write(tmp_path, M + f"base_url: '{url}'}}]\n"), env={}).models
    assert model.base_url == url


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("default_model: a\ndefault_model: b\n", "line 2, column 1: the key 'default_model'"),
        ("models:\n  - name: a\n    provider: echo\n    name: b\n", "line 4, column 5"),
        ("models: [{name: a, provider: echo, name: b}]\n", "the key 'name' is written twice"),
        ("routing: {strategy: priority}\nrouting: {cooldown_seconds: 5}\n", "line 2"),
    ],
)
def test_a_key_written_twice_is_refused_not_the_last_one_kept(tmp_path, text, line):
    problems = problems_of(write(tmp_path, text))
    assert any(line in p and "written twice" in p for p in problems), problems


def test_a_merge_key_may_be_written_over(tmp_path):
    text = (
        "models:\n  - &base {name: a, provider: echo, priority: 5}\n"
        "  - <<: *base\n    name: b\n    priority: 1\n"
    )
    first, second = load_config(write(tmp_path, text), env={}).models
    assert (first.name, first.priority, second.name, second.priority) == ("a", 5, "b", 1)


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "Yes", "NO"])
def test_yes_and_no_are_words_as_in_the_go_proxy(tmp_path, word):
    """yaml.v3 (YAML 1.2) reads only true and false as booleans: a model named `no` loads."""
    text = f"models: [{{name: {word}, provider: echo, strip_think: {word}}}]\n"
    (model,) = load_config(write(tmp_path, text), env={}).models
    assert model.name == word
    assert model.strip_think is (word.lower() in ("yes", "on", "y"))


def test_a_whole_number_may_be_written_with_a_point(tmp_path):
    text = "models: [{name: a, provider: echo, requests_per_minute: 60.0, priority: 2.0}]\n"
    (model,) = load_config(write(tmp_path, text), env={}).models
    assert model.requests_per_minute == 60 and model.priority == 2


def test_missing_file_is_a_config_error(tmp_path):
    assert "cannot read" in problems_of(str(tmp_path / "absent.yaml"))[0]


def test_env_overrides(tmp_path):
    path = write(tmp_path, "retry: {max_retries: 5, base_delay: 2s}\n")
    env = {
        "RETRY_MAX_RETRIES": "1",
        "RETRY_BASE_DELAY": "250ms",
        "RETRY_MAX_DELAY": "4",
        "RETRY_JITTER": "0.5",
        "RATE_LIMIT_STORAGE": "redis://127.0.0.1:6379/0",
        "AUTH_TOKEN": "secret-token",
        "PORT": "9000",
        "THREADS": "16",
        "LOG_FORMAT": "TEXT",
    }
    config = load_config(path, env=env)
    assert (config.retry.max_retries, config.retry.base_delay) == (1, 0.25)
    assert (config.retry.max_delay, config.retry.jitter) == (4.0, 0.5)
    assert config.rate_limits.storage == "redis://127.0.0.1:6379/0"
    assert config.runtime.port == 9000 and config.runtime.threads == 16
    assert config.runtime.log_format == "text"
    (token,) = config.tokens
    assert token.name == "default" and token.sha256 == hash_token("secret-token")
    assert "secret-token" not in repr(config)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("RETRY_JITTER", "x"),
        ("RETRY_BASE_DELAY", "soon"),
        ("WEB_CONCURRENCY", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("RATE_LIMIT_STORAGE", "mysql://db"),
    ],
)
def test_invalid_env_values_name_the_variable(tmp_path, name, value):
    path = write(tmp_path, "models: []\n")
    problems = problems_of(path, env={name: value})
    assert problems and all(p.startswith(name + ":") for p in problems)


def test_tokens_plain_and_hashed(tmp_path):
    digest = hash_token("second")
    path = write(
        tmp_path,
        f"""
        auth:
          tokens:
            - name: a
              token: first
              models: ["gpt-*", SMALL]
            - name: b
              token_sha256: {digest.upper()}
          admin_token: ${{ADMIN_TOKEN}}
        """,
    )
    config = load_config(path, env={})
    a, b = config.tokens
    assert a.sha256 == hash_token("first") and a.models == ("gpt-*", "SMALL")
    assert b.sha256 == digest and b.models == ("*",)
    assert config.admin_token is None


def test_go_config_is_accepted(tmp_path):
    path = write(
        tmp_path,
        """
        models:
          - name: deepseek/deepseek-chat:free
            provider: openrouter
            priority: 1
            requests_per_minute: 20
            requests_per_hour: 100
            requests_per_day: 200
            url: "https://openrouter.ai/api/v1/chat/completions"
            token: "or-token"
            max_request_length: 131072
            model_size: BIG
            http_client_config:
              timeout_seconds: 30
        """,
    )
    (model,) = load_config(path, env={}).models
    assert model.timeout_seconds == 30 and model.connect_timeout_seconds == 5
    assert model.all_categories == ("BIG",)
    assert model.upstream_model() == "deepseek/deepseek-chat:free"


def test_builtin_default_when_no_file(tmp_path):
    # The working directory (tmp_path) has no conf/, so the repository's default is used.
    config = load_config(env={})
    assert {m.name for m in config.models} == {"echo", "echo-large"}
    assert config.default_model == "SMALL"


def test_env_file_does_not_override_real_env(tmp_path, monkeypatch):
    env_file = tmp_path / "custom.env"
    env_file.write_text("AUTH_TOKEN=from-file\nPORT=9999\n")
    monkeypatch.setattr(os, "environ", {**os.environ, "PORT": "7000"})
    load_env_file(str(env_file))
    assert os.environ["AUTH_TOKEN"] == "from-file"
    assert os.environ["PORT"] == "7000"
    with pytest.raises(ConfigError):
        load_env_file(str(tmp_path / "missing.env"))


def test_a_client_token_with_an_unset_variable_stops_start_up(tmp_path):
    path = write(
        tmp_path,
        """
        auth:
          tokens:
            - name: team-a
              token: ${TEAM_A_TOKEN}
            - name: team-b
              token: b-secret
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert err.value.problems == [
        "auth.tokens[0].token: its variable is not set (team-a); set it, or remove the entry"
    ]
    # Set but empty is no token either.
    with pytest.raises(ConfigError):
        load_config(path, env={"TEAM_A_TOKEN": ""})
    config = load_config(path, env={"TEAM_A_TOKEN": "a-secret-value"})
    assert [t.name for t in config.tokens] == ["team-a", "team-b"]


@pytest.mark.parametrize("env", [{}, {"TOK": "sk-set-token-value"}])
def test_a_default_that_names_another_variable_is_refused(tmp_path, env):
    """`${TOK:-${X}}` read as TOK (or the text `${X`) and a stray `}`: `sk-set-token-value}`."""
    text = "auth: {tokens: [{name: t, token: '${TOK:-${X}}'}]}\n"
    problems = problems_of(write(tmp_path, text), env=env)
    assert problems == [
        "auth.tokens[0].token: a ${TOK:-...} default holds another ${...}, which is not "
        "replaced; give the default as plain text"
    ]


def test_a_default_may_hold_other_text(tmp_path):
    text = "models: [{name: echo, provider: echo, model: '${M:-a-b:c}'}]\n"
    (model,) = load_config(write(tmp_path, text), env={}).models
    assert model.model == "a-b:c"


def test_a_retention_may_be_longer_than_a_wait(tmp_path):
    """responses.ttl_seconds is how long answers are kept (OpenAI keeps them 30 days), not a
    timeout: the week that bounds waits does not bound it."""
    config = load_config(write(tmp_path, "responses: {ttl_seconds: 2592000}\n"), env={})
    assert config.responses.ttl_seconds == 2592000
    problems = problems_of(write(tmp_path, "responses: {ttl_seconds: 1e308}\n"))
    assert any(p.startswith("responses.ttl_seconds") for p in problems), problems


def test_a_date_is_text_as_in_the_go_proxy(tmp_path):
    text = (
        "models: [{name: az, provider: azure, base_url: 'https://r.openai.azure.com', "
        "token: sk-x-123456789, api_version: 2024-10-21}]\n"
    )
    (model,) = load_config(write(tmp_path, text), env={}).models
    assert model.api_version == "2024-10-21"


def test_a_bounded_whole_number_with_a_fraction_names_it(tmp_path):
    problems = problems_of(write(tmp_path, "routing: {max_attempts: 2.5}\n"))
    assert any(p.startswith("routing.max_attempts") for p in problems), problems
