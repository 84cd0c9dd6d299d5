"""load_config: the file (or the built-in default), `${VAR}`, the environment, one load."""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import yaml
from marshmallow import ValidationError

from ..config.env import interpolate, overlay_env, runtime_from_env
from ..config.errors import ConfigError, flatten_errors, name_sources
from ..config.goconf import clamp_retry
from ..config.models import Config, ModelConfig
from ..config.schema import ConfigSchema

# The package's one logger, as before it was split into modules.
logger = logging.getLogger(__package__)

DEFAULT_CONFIG_PATH = "conf/config.yaml"
# Where the Go ai-proxy looks for its config: used when no config is named and it exists.
GO_CONFIG_PATH = "config.yaml"
MAX_CONFIG_BYTES = 4 * 1024 * 1024

# Used when neither --config, AI_PROXY_CONFIG nor conf/config.yaml is there (an installed wheel
# run from another directory): the same offline models as the shipped conf/config.yaml.
BUILTIN_CONFIG = {
    "default_model": "SMALL",
    "models": [
        {"name": "echo", "provider": "echo", "model_size": "SMALL"},
        {"name": "echo-large", "provider": "echo", "model_size": "BIG"},
    ],
}


def deep_merge(base: dict, extra: Mapping) -> dict:
    """`extra` over `base`: dicts merge, everything else (lists included) replaces."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_config_path(path: str | None, env: Mapping[str, str]) -> Path | None:
    """The config file to read, or None for the built-in default.

    Named (`--config`, AI_PROXY_CONFIG) first; else `./config.yaml`, where the Go ai-proxy
    reads its config, so a Go deployment's folder runs as it is; else conf/config.yaml here or
    beside the package.
    """
    chosen = path or env.get("AI_PROXY_CONFIG")
    if chosen:
        return Path(chosen)
    for candidate in (
        Path(GO_CONFIG_PATH),
        Path(DEFAULT_CONFIG_PATH),
        Path(__file__).resolve().parents[2] / DEFAULT_CONFIG_PATH,
    ):
        if candidate.is_file():
            return candidate
    return None


class ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader, closer to how the Go ai-proxy reads its file (yaml.v3, YAML 1.2):
    only true and false are booleans (`name: yes`, `provider: no` are words) and dates are text;
    and a key written twice in one mapping is an error naming both lines, not the last one
    silently winning. (YAML 1.1's `1:30` is still the number 90.)"""

    # Dates stay text too (`api_version: 2024-10-21`), as yaml.v3 gives them to a string field.
    yaml_implicit_resolvers = {
        first: [
            (tag, regex)
            for tag, regex in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
        ]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base`: what it brings may be written over
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # not a key a mapping can have: the constructor says so
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"the key {key!r} is written twice (first on line {first})",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_config_file(path: Path) -> dict:
    """Parse the YAML file into a dict; problems are ConfigErrors naming the file."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes"])
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=ConfigLoader)  # noqa: S506 - a SafeLoader
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror or err}"]) from err
    except UnicodeDecodeError as err:
        raise ConfigError([f"{path}: {not_utf8(err)}"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}:{where}: {problem}"]) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    if _expands_past(data, MAX_CONFIG_VALUES):
        raise ConfigError(
            [
                f"{path}: holds more than {MAX_CONFIG_VALUES:,} values (a YAML alias counts "
                "each time it is used)"
            ]
        )
    return data


# How many values a config may hold, an alias counted again wherever it is used: a few hundred
# bytes of nested aliases stand for billions (each reading of the file would copy them all).
MAX_CONFIG_VALUES = 100_000


def _expands_past(data: object, budget: int) -> bool:
    """Whether walking `data` as a tree (shared parts once per use) meets more than `budget`
    values; stops as soon as it does."""
    stack = [data]
    while stack:
        budget -= 1
        if budget < 0:
            return True
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
            stack.extend(value.keys())
        elif isinstance(value, list):
            stack.extend(value)
    return False


def not_utf8(err: UnicodeDecodeError) -> str:
    """A decoding error in words: the byte and where it is."""
    return f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"


def load_config(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping | None = None,
) -> Config:
    """Read, interpolate, override and validate the configuration; raise ConfigError if wrong."""
    env = os.environ if env is None else env
    config_path = resolve_config_path(path, env)
    if config_path is None:
        raw, source = copy.deepcopy(BUILTIN_CONFIG), "<built-in>"
    else:
        raw, source = read_config_file(config_path), str(config_path)
        if config_path == Path(GO_CONFIG_PATH) and not (path or env.get("AI_PROXY_CONFIG")):
            logger.info(
                "no config named (--config, AI_PROXY_CONFIG): using ./%s, the Go ai-proxy's "
                "default location",
                GO_CONFIG_PATH,
            )
    if overrides:
        raw = deep_merge(raw, overrides)

    unset: set[str] = set()
    data = interpolate(raw, env, "", unset)
    for index, entry in enumerate(_token_entries(data)):
        if f"auth.tokens[{index}].token" in unset and isinstance(entry, dict):
            # Left out below; a stand-in secret lets the rest of the entry be checked.
            entry["token"] = "unset"
    problems: list[str] = []
    runtime = runtime_from_env(env, problems)
    # The environment goes in before the one load, so the schemas check its values too.
    sources = overlay_env(data, env, problems)
    try:
        loaded = ConfigSchema().load(data)
    except ValidationError as err:
        problems.extend(name_sources(flatten_errors(err.messages), sources))
        raise ConfigError(problems) from None

    left_out: list[str] = []
    models = []
    for index, model in enumerate(loaded["models"]):
        if f"models[{index}].token" in unset:
            left_out.append(f"models[{index}] ({model.name}): its token variable is not set")
            continue
        models.append(replace(model, index=index))
    tokens = list(loaded["auth"]["tokens"])
    for index, token in enumerate(tokens):
        if f"auth.tokens[{index}].token" in unset:
            # Never left out as a model is: with no token left the proxy would serve without
            # auth (loopback clients only), and the token's quotas and model list would go too.
            problems.append(
                f"auth.tokens[{index}].token: its variable is not set ({token.name}); set it, "
                "or remove the entry"
            )
    retry_names = {
        path.removeprefix("retry."): name for path, name in sources.items() if "retry." in path
    }
    retry, warnings = clamp_retry(loaded["retry"], retry_names)
    # The tokens as written (AUTH_TOKEN's among them), for the scrubber only.
    client_secrets = [
        entry["token"]
        for index, entry in enumerate(_token_entries(data))
        if isinstance(entry, dict)
        and isinstance(entry.get("token"), str)
        and f"auth.tokens[{index}].token" not in unset
    ]

    config = Config(
        models=tuple(models),
        default_model=loaded["default_model"],
        aliases=dict(loaded["aliases"]),
        tokens=tuple(tokens),
        admin_token=loaded["auth"]["admin_token"],
        server=loaded["server"],
        routing=loaded["routing"],
        retry=retry,
        rate_limits=loaded["rate_limits"],
        responses=loaded["responses"],
        cache=loaded["cache"],
        runtime=runtime,
        source=source,
        left_out=tuple(left_out),
        warnings=tuple(warnings),
        client_secrets=tuple(filter(None, client_secrets)),
    )
    problems.extend(_cross_check(config, loaded["models"]))
    if problems:
        raise ConfigError(problems)
    for warning in warnings:
        logger.warning("%s", warning)
    return config


def _token_entries(data: object) -> list:
    auth = data.get("auth") if isinstance(data, dict) else None
    tokens = auth.get("tokens") if isinstance(auth, dict) else None
    return tokens if isinstance(tokens, list) else []


def _cross_check(config: Config, all_models: tuple[ModelConfig, ...]) -> list[str]:
    """Faults that span fields: aliases, the default model, token names."""
    problems = []
    names = {m.name for m in all_models}
    loaded_names = {m.name for m in config.models}
    categories = {c for m in all_models for c in m.all_categories}
    for alias, members in config.aliases.items():
        if alias in names:
            problems.append(f"aliases.{alias}: the same name as a configured model")
        for i, member in enumerate(members):
            if member not in names and not _wildcard_match(member, all_models):
                problems.append(f"aliases.{alias}[{i}]: no model named {member!r}")
    if config.default_model:
        target = config.default_model
        known = (
            target in names
            or target in config.aliases
            or target.upper() in categories
            or _wildcard_match(target, all_models)
        )
        if not known:
            problems.append(f"default_model: {target!r} names no model, alias or category")
        elif target in names and target not in loaded_names:
            logger.warning("default_model %s was left out: its token variable is not set", target)
    seen: set[str] = set()
    digests: set[str] = set()
    for token in config.tokens:
        if token.name in seen:
            problems.append(f"auth.tokens: the name {token.name!r} is used twice")
        if token.sha256 in digests:
            problems.append(f"auth.tokens: {token.name!r} has the same secret as another token")
        seen.add(token.name)
        digests.add(token.sha256)
    return problems


def _wildcard_match(name: str, models) -> bool:
    return any(m.is_wildcard and name.startswith(m.name[:-1]) for m in models)
