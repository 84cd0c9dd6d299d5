"""Each setting is declared once: its schema gives the type, default and validation, the frozen
dataclass takes its default from there, and the environment is checked by the same schemas."""

from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

import pytest

import app.config as config_package
from app.config import (
    CONFIG_ENV,
    RUNTIME_ENV,
    CacheConfig,
    CacheSchema,
    Config,
    ConfigError,
    ConfigSchema,
    ModelConfig,
    ModelSchema,
    RateLimitConfig,
    RateLimitSchema,
    RetryConfig,
    RetrySchema,
    RoutingConfig,
    RoutingSchema,
    RuntimeConfig,
    RuntimeSchema,
    ServerConfig,
    ServerSchema,
    TokenConfig,
    TokenSchema,
    hash_token,
    load_config,
    resolve_config_path,
)
from app.config.models import declared_by
from app.config.schema import default_of

PACKAGE_DIR = Path(config_package.__file__).parent
DIGEST = "ab" * 32

# Each dataclass, the schema that loads into it, the least document it loads, and the same
# object built in code with only the values that have no default.
BOUND = [
    (ModelConfig, ModelSchema, {"name": "m"}, {"name": "m"}),
    (
        TokenConfig,
        TokenSchema,
        {"name": "t", "token_sha256": DIGEST},
        {"name": "t", "sha256": DIGEST},
    ),
    (ServerConfig, ServerSchema, {}, {}),
    (RoutingConfig, RoutingSchema, {}, {}),
    (RetryConfig, RetrySchema, {}, {}),
    (RateLimitConfig, RateLimitSchema, {}, {}),
    (RuntimeConfig, RuntimeSchema, {}, {}),
    (CacheConfig, CacheSchema, {}, {}),
]
# Fields a schema reads that the dataclass holds in another form (nested, or only as a digest).
CONSUMED = {
    ModelSchema: {"http_client_config"},
    TokenSchema: {"token", "token_sha256"},
    ConfigSchema: {"auth"},
}


@pytest.mark.parametrize(("cls", "schema", "document", "required"), BOUND)
def test_the_schema_default_is_the_dataclass_default(cls, schema, document, required):
    assert schema().load(document) == cls(**required)


@pytest.mark.parametrize("cls", [row[0] for row in BOUND] + [Config])
def test_every_declared_field_takes_its_default_from_its_schema(cls):
    declared = {
        name: field
        for schema in cls.__declared_by__
        for name, field in schema._declared_fields.items()
    }
    for item in dataclasses.fields(cls):
        if item.name not in declared or (cls, item.name) == (ModelConfig, "kind"):
            continue
        source = declared[item.name]
        if source.required:
            assert item.default is dataclasses.MISSING, item.name
            continue
        if item.default_factory is not dataclasses.MISSING:
            assert item.default_factory() == default_of(source), item.name
        else:
            assert item.default == default_of(source), item.name


@pytest.mark.parametrize(("cls", "schema"), [row[:2] for row in BOUND] + [(Config, ConfigSchema)])
def test_every_setting_has_a_place_in_its_dataclass(cls, schema):
    names = {item.name for item in dataclasses.fields(cls)}
    missing = set(schema._declared_fields) - names - CONSUMED.get(schema, set())
    assert not missing


def test_a_default_written_twice_is_refused():
    class ExampleSchema(RetrySchema):
        """Declares max_retries with its default, as RetrySchema does."""

    with pytest.raises(TypeError, match="max_retries"):

        @declared_by(ExampleSchema)
        class Twice:
            max_retries: int = 3


@pytest.mark.parametrize(
    ("document", "attribute", "expected"),
    [
        ("retry: ~\n", "retry", RetryConfig()),
        ("server: ~\nrouting: ~\n", "routing", RoutingConfig()),
        ("rate_limits: ~\n", "rate_limits", RateLimitConfig()),
        ("models: [{name: m, requests_per_minute: ~, input_cost_per_mtok: ~}]\n", "models", None),
        ("auth: {tokens: [{name: t, token: x, models: ~, budget_per_day: ~}]}\n", "tokens", None),
        ("models: [{name: m, http_client_config: ~}]\n", "models", None),
    ],
)
def test_null_reads_as_the_declared_default(tmp_path, document, attribute, expected):
    path = tmp_path / "config.yaml"
    path.write_text(document)
    value = getattr(load_config(str(path), env={}), attribute)
    if attribute == "models":
        assert value == (ModelConfig(name="m"),)
    elif attribute == "tokens":
        assert value == (TokenConfig(name="t", sha256=hash_token("x")),)
    else:
        assert value == expected


# --- the environment goes through the same schemas ----------------------------------------------

GOOD_ENV = {
    "RETRY_MAX_RETRIES": ("7", 7),
    "RETRY_BASE_DELAY": ("1m30s", 90.0),
    "RETRY_MAX_DELAY": ("2h", 7200.0),
    "RETRY_JITTER": ("0.25", 0.25),
    "RATE_LIMIT_STORAGE": ("redis://127.0.0.1:6379/1", "redis://127.0.0.1:6379/1"),
}
BAD_ENV = {
    "RETRY_MAX_RETRIES": ["many", "1.0", "0x10"],
    "RETRY_BASE_DELAY": ["soon", "1d", "1m 30"],
    "RETRY_MAX_DELAY": ["later", "--2s"],
    "RETRY_JITTER": ["lots", "NaN", "-inf"],
    "RATE_LIMIT_STORAGE": ["mysql://user:hunter2@db/0", "hunter2", "file:///tmp/x"],
}
FILE = "retry: {max_retries: 2, base_delay: 5s, max_delay: 10m, jitter: 0.5}\n"
FILE += "rate_limits: {storage: memcached://127.0.0.1:11211}\n"


def test_every_config_variable_is_in_the_tables():
    assert {setting.name for setting in CONFIG_ENV} == set(GOOD_ENV) == set(BAD_ENV)


@pytest.mark.parametrize("setting", CONFIG_ENV, ids=lambda s: s.name)
def test_a_variable_wins_over_the_file(tmp_path, setting):
    path = tmp_path / "config.yaml"
    path.write_text(FILE)
    text, expected = GOOD_ENV[setting.name]
    config = load_config(str(path), env={setting.name: f" {text} "})
    assert getattr(getattr(config, setting.section), setting.key) == expected
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, values in BAD_ENV.items() for value in values]
)
def test_a_bad_variable_is_named_and_its_value_not_echoed_if_secret(tmp_path, name, value):
    path = tmp_path / "config.yaml"
    path.write_text(FILE)
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env={name: value})
    assert info.value.problems
    assert all(p.startswith(name + ": ") for p in info.value.problems), info.value.problems
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HOST", "not a host"),
        ("PORT", "http"),
        ("PORT", "65536"),
        ("WEB_CONCURRENCY", "-1"),
        ("THREADS", "2.5"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_runtime_variable_is_named(tmp_path, name, value):
    with pytest.raises(ConfigError) as info:
        load_config(None, env={name: value})
    assert [p.split(":")[0] for p in info.value.problems] == [name]


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("HOST", " ::1 ", "host", "::1"),
        ("PORT", "0", "port", 0),
        ("WEB_CONCURRENCY", "256", "workers", 256),
        ("THREADS", "1", "threads", 1),
        ("LOG_LEVEL", "warning", "log_level", "WARNING"),
        ("LOG_FORMAT", "Text", "log_format", "text"),
    ],
)
def test_runtime_variables(name, value, attribute, expected):
    assert RUNTIME_ENV[attribute] == name
    assert getattr(load_config(None, env={name: value}).runtime, attribute) == expected


def test_an_environment_value_is_not_interpolated():
    config = load_config(None, env={"AUTH_TOKEN": "${HOME}", "HOME": "/root"})
    (token,) = config.tokens
    assert token.sha256 == hash_token("${HOME}")
    assert config.client_secrets == ("${HOME}",)


def test_auth_token_comes_after_the_file_tokens_and_in_the_secrets(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("auth: {tokens: [{name: a, token: from-file}]}\n")
    config = load_config(str(path), env={"AUTH_TOKEN": "from-env"})
    assert [t.name for t in config.tokens] == ["a", "default"]
    assert config.client_secrets == ("from-file", "from-env")


def test_auth_token_named_like_a_file_token_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("auth: {tokens: [{name: default, token: other}]}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path), env={"AUTH_TOKEN": "from-env"})
    assert info.value.problems == ["auth.tokens: the name 'default' is used twice"]


# --- the package's shape ---------------------------------------------------------------------


def test_the_shipped_config_is_found_beside_the_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    found = resolve_config_path(None, {})
    assert found == PACKAGE_DIR.parents[1] / "conf" / "config.yaml"
    assert found.is_file()


@pytest.mark.parametrize("module", sorted(PACKAGE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_config_modules_are_small_and_import_one_way(module):
    source = module.read_text()
    assert source.count("\n") <= 500
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("app"):
            assert node.module.startswith("app.config") or node.module == "app.redact"
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("app") for alias in node.names)


def test_the_package_reexports_every_name_importers_use():
    used = set()
    root = PACKAGE_DIR.parents[1]
    for folder in ("app", "tests", "bench"):
        for path in (root / folder).rglob("*.py"):
            if PACKAGE_DIR in path.parents:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module == "app.config":
                    used.update(alias.name for alias in node.names)
    assert used and not used - set(config_package.__all__)
    assert all(hasattr(config_package, name) for name in config_package.__all__)
    assert os.path.basename(config_package.__file__) == "__init__.py"
