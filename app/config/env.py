"""The environment: `.env`, `${VAR}` interpolation, and the variables laid over the config."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from dotenv import load_dotenv
from marshmallow import ValidationError

from ..config.errors import ConfigError, flatten_errors, name_sources
from ..config.goconf import go_int, go_jitter
from ..config.models import RuntimeConfig
from ..config.schema import RuntimeSchema

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class EnvSetting(NamedTuple):
    """A variable that sets one config value; `parse` reads its text where YAML's rules differ."""

    name: str
    section: str
    key: str
    parse: Callable[[str], object] = str


# CONTRACT section 2: these override the file; the schemas check them like any value there.
CONFIG_ENV = (
    EnvSetting("RETRY_MAX_RETRIES", "retry", "max_retries", go_int),
    EnvSetting("RETRY_BASE_DELAY", "retry", "base_delay"),
    EnvSetting("RETRY_MAX_DELAY", "retry", "max_delay"),
    EnvSetting("RETRY_JITTER", "retry", "jitter", go_jitter),
    EnvSetting("RATE_LIMIT_STORAGE", "rate_limits", "storage"),
)
# RuntimeSchema's fields and the variables that set them: they have no place in the file.
RUNTIME_ENV = {
    "host": "HOST",
    "port": "PORT",
    "workers": "WEB_CONCURRENCY",
    "threads": "THREADS",
    "log_level": "LOG_LEVEL",
    "log_format": "LOG_FORMAT",
}


def env_value(env: Mapping[str, str], name: str) -> str | None:
    """A variable's text without surrounding blanks; None where it is unset or blank."""
    return (env.get(name) or "").strip() or None


def overlay_env(data: dict, env: Mapping[str, str], problems: list[str]) -> dict[str, str]:
    """Lay CONFIG_ENV and AUTH_TOKEN over the interpolated file, in place.

    Returns, per config path set here, the variable that set it, so that a fault found when
    the schemas load it names the variable. A value that does not parse goes to `problems`.
    """
    sources: dict[str, str] = {}
    for setting in CONFIG_ENV:
        text = env_value(env, setting.name)
        section = data.get(setting.section)
        if text is None or not isinstance(section, dict | None):
            continue  # a section that is not a mapping is reported by the schema
        try:
            value = setting.parse(text)
        except ValueError as err:
            problems.append(f"{setting.name}: {err}")
            continue
        data[setting.section] = {**(section or {}), setting.key: value}
        sources[f"{setting.section}.{setting.key}"] = setting.name
    auth_token = env.get("AUTH_TOKEN")
    auth = data.get("auth")
    if auth_token and isinstance(auth, dict | None):
        # Go compat: one more client token, named `default`, after those of the file.
        tokens = (auth or {}).get("tokens", [])
        if isinstance(tokens, list):
            default = {"name": "default", "token": auth_token}
            data["auth"] = {**(auth or {}), "tokens": [*tokens, default]}
    return sources


def runtime_from_env(env: Mapping[str, str], problems: list[str]) -> RuntimeConfig:
    """HOST, PORT, WEB_CONCURRENCY, THREADS, LOG_LEVEL, LOG_FORMAT; faults go to `problems`.

    A variable with a fault is reported and its default used, so logging can still be set up.
    """
    # Only unset or empty means the default here: a blank PORT is a mistake to report.
    raw = {key: env[name].strip() for key, name in RUNTIME_ENV.items() if env.get(name)}
    try:
        return RuntimeSchema().load(raw)
    except ValidationError as err:
        problems.extend(name_sources(flatten_errors(err.messages), RUNTIME_ENV))
        good = {key: text for key, text in raw.items() if key not in err.messages}
        return RuntimeSchema().load(good)


def interpolate(value: object, env: Mapping[str, str], path: str, unset: set[str]) -> object:
    """Replace `${VAR}` and `${VAR:-default}` in every string; note paths naming unset variables."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if default is not None and "${" in default:
                # `${A:-${B}}` would read as A, else the text `${B` and a stray `}`.
                raise ConfigError(
                    [
                        f"{path or '(top)'}: a ${{{name}:-...}} default holds another ${{...}}, "
                        "which is not replaced; give the default as plain text"
                    ]
                )
            current = env.get(name)
            if current:
                return current
            if default is not None:
                return default
            unset.add(path)
            return ""

        return _VAR_RE.sub(substitute, value)
    if isinstance(value, dict):
        return {
            key: interpolate(item, env, f"{path}.{key}" if path else str(key), unset)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [interpolate(item, env, f"{path}[{i}]", unset) for i, item in enumerate(value)]
    return value


# A .env file is a list of settings: a larger one is not what was meant.
MAX_ENV_FILE_BYTES = 1024 * 1024


def load_env_file(path: str | None = None) -> str | None:
    """Load `.env` from `path`, AI_PROXY_ENV_FILE or ./.env; real environment variables win."""
    chosen = path or os.environ.get("AI_PROXY_ENV_FILE") or ".env"
    if not Path(chosen).is_file():
        if path:
            raise ConfigError([f"--env-file {path}: no such file"])
        return None
    # Read here, so that whatever is wrong with the file is a ConfigError naming it (gunicorn
    # reads this on HUP too, and any other error there would stop its master).
    try:
        data = Path(chosen).read_bytes()
        if len(data) > MAX_ENV_FILE_BYTES:
            raise ConfigError([f"{chosen}: larger than {MAX_ENV_FILE_BYTES} bytes"])
        text = data.decode("utf-8")
    except OSError as err:
        raise ConfigError([f"{chosen}: cannot read: {err.strerror or err}"]) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            [f"{chosen}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})"]
        ) from None
    load_dotenv(stream=io.StringIO(text), override=False)
    return chosen
