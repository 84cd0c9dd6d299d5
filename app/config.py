"""Configuration: the YAML file, `${VAR}` interpolation, environment overrides and validation."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import yaml
from dotenv import load_dotenv
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from app.redact import credential_forms, header_secrets, url_secrets

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "conf/config.yaml"
# Where the Go ai-proxy looks for its config: used when no config is named and it exists.
GO_CONFIG_PATH = "config.yaml"
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_WORKERS = 1
DEFAULT_THREADS = 64
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_IDLE_CONN_TIMEOUT_SECONDS = 90.0
MAX_CONFIG_BYTES = 4 * 1024 * 1024
# Longest a request may spend on retries and fallbacks before its first byte.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 300.0
# Longest a stream may run in all.
DEFAULT_STREAM_TIMEOUT_SECONDS = 1800.0

ROUTING_STRATEGIES = ("priority", "weighted", "least-busy", "latency")
RATE_LIMIT_STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster", "memcached")
MODEL_KINDS = ("chat", "embedding", "image")
# Go-style `url` endpoints and the kind of model each serves; the longest suffix is tried first.
ENDPOINT_KINDS = (
    ("/chat/completions", "chat"),
    ("/images/generations", "image"),
    ("/embeddings", "embedding"),
    ("/pipeline/feature-extraction", "embedding"),
    ("/completions", "chat"),
)
# Providers with an adapter of their own (the rest speak OpenAI's API); their `url` forms differ.
NATIVE_PROVIDERS = frozenset(
    ("anthropic", "google", "gemini", "cohere", "cloudflare", "azure", "gigachat", "echo")
)
# Image-only in the Go ai-proxy: its /image handler calls them with a GET of `url?prompt=&model=`.
GO_IMAGE_PROVIDERS = frozenset(("airforce",))
# Text-to-image model families, recognised in a model id (Workers AI `@cf/...`, Together, ...).
_IMAGE_MODEL_RE = re.compile(
    r"(?<![a-z0-9])(?:flux(?![a-z])|stable-diffusion|sdxl|dall-e|gpt-image|dreamshaper"
    r"|lucid-origin|phoenix-\d|imagen-\d|text-to-image)",
    re.IGNORECASE,
)
# The last segment of an API root (`/v1`, `/v1beta`, `/openai`, ...): a `url` ending so is a root.
_API_ROOT_SEGMENT_RE = re.compile(r"^(?:v\d+(?:\.\d+)?[a-z]*\d*|openai|api|inference)$", re.I)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")

# Used when neither --config, AI_PROXY_CONFIG nor conf/config.yaml is there (an installed wheel
# run from another directory): the same offline models as the shipped conf/config.yaml.
BUILTIN_CONFIG = {
    "default_model": "SMALL",
    "models": [
        {"name": "echo", "provider": "echo", "model_size": "SMALL"},
        {"name": "echo-large", "provider": "echo", "model_size": "BIG"},
    ],
}

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# A plain number of seconds, or Go's time.ParseDuration form: `300ms`, `1m30s`, `-1.5h`, `2h45m`.
_SECONDS_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_GO_DURATION_PART_RE = re.compile(r"(\d*)(?:\.(\d*))?\s*(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Go's time.Duration is an int64 of nanoseconds: longer durations do not parse there either.
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
# Retry settings outside these ranges are brought into them with a warning (see clamp_retry).
MAX_RETRIES = 20


class ConfigError(Exception):
    """The configuration is wrong; `problems` holds one `path: message` line per fault."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def hash_token(token: str) -> str:
    """The SHA-256 hex digest that `token_sha256` holds for a client token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_go_duration(value: object) -> float:
    """Signed seconds from a Go duration (`1m30s`, `300us`, `-1.5h`, `0`) or plain seconds.

    Go's `time.ParseDuration` grammar: an optional sign, then one or more decimal numbers each
    with a unit (ns, us/µs, ms, s, m, h); `0` alone needs no unit. A plain number (`2`, `0.5`)
    is taken as seconds, as this proxy always has. Raises ValueError for anything else.
    """
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if _SECONDS_RE.match(text):
            seconds = float(text)
        else:
            seconds = _go_duration(text)
    if seconds != seconds or abs(seconds) > MAX_DURATION_SECONDS:  # NaN or past int64 ns
        raise ValueError(f"not a duration: {value!r} (out of range)")
    return seconds


def _go_duration(text: str) -> float:
    sign = 1.0
    rest = text
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    total = 0.0
    position = 0
    while position < len(rest):
        match = _GO_DURATION_PART_RE.match(rest, position)
        # A number needs digits before or after its point (`.5s`, `5.s`), as in Go.
        if not match or not (match.group(1) or match.group(2)):
            raise ValueError(
                f"not a duration: {text!r} (use 500ms, 1m30s, 2h45m or a number of seconds)"
            )
        whole, fraction, unit = match.group(1) or "0", match.group(2) or "", match.group(3)
        total += float(f"{whole}.{fraction or '0'}") * _GO_UNITS[unit]
        position = match.end()
    if not rest:
        raise ValueError(f"not a duration: {text!r}")
    return sign * total


def parse_duration(value: object) -> float:
    """Seconds (not negative) from `500ms`, `2s`, `1m30s`, `1h` or a plain number of seconds."""
    seconds = parse_go_duration(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """`1.5s`, `250ms`, `0s`: a duration as a warning line shows it."""
    if seconds and abs(seconds) < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"


# ---------------------------------------------------------------------------------------------
# The validated configuration.


@dataclass(frozen=True)
class ModelConfig:
    """One configured deployment (an entry of `models:`)."""

    name: str
    provider: str = "openai"
    base_url: str | None = None
    url: str | None = None
    token: str | None = None
    model: str | None = None
    priority: int = 0
    weight: float = 1.0
    requests_per_minute: int = 0
    requests_per_hour: int = 0
    requests_per_day: int = 0
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    max_request_length: int = 0
    context_window: int = 0
    model_size: str | None = None
    categories: tuple[str, ...] = ()
    kind: str = "chat"
    input_cost_per_mtok: float = 0.0
    output_cost_per_mtok: float = 0.0
    strip_think: bool = False
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_SECONDS
    idle_conn_timeout_seconds: float = DEFAULT_IDLE_CONN_TIMEOUT_SECONDS
    # Provider-specific: Azure's API version; GigaChat's OAuth endpoint, scope and CA bundle.
    api_version: str | None = None
    auth_url: str | None = None
    scope: str | None = None
    ca_bundle: str | None = None
    index: int = 0

    @property
    def key(self) -> str:
        """The deployment's identity in quotas and cooldowns, the same in every worker."""
        return f"{self.name}#{self.index}"

    @property
    def is_wildcard(self) -> bool:
        return self.name.endswith("/*")

    @property
    def all_categories(self) -> tuple[str, ...]:
        """Upper-cased categories: `model_size` first, then `categories`."""
        names = ([self.model_size] if self.model_size else []) + list(self.categories)
        return tuple(dict.fromkeys(name.upper() for name in names))

    def upstream_model(self, requested: str | None = None) -> str:
        """The model id sent upstream; for a wildcard entry, what follows its prefix."""
        if self.is_wildcard and requested and requested.startswith(self.name[:-1]):
            return requested[len(self.name) - 1 :]
        if self.model:
            return self.model
        prefix = self.provider + "/"
        return self.name[len(prefix) :] if self.name.startswith(prefix) else self.name


@dataclass(frozen=True)
class TokenConfig:
    """A client token; only its SHA-256 digest is kept."""

    name: str
    sha256: str
    models: tuple[str, ...] = ("*",)
    requests_per_minute: int = 0
    requests_per_hour: int = 0
    requests_per_day: int = 0
    tokens_per_minute: int = 0
    tokens_per_day: int = 0
    budget_per_day: float = 0.0
    budget_per_month: float = 0.0


@dataclass(frozen=True)
class ServerConfig:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    metrics_token: str | None = None
    cors_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoutingConfig:
    strategy: str = "priority"
    max_attempts: int = 5
    cooldown_seconds: float = 60.0
    failure_threshold: int = 1
    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    stream_timeout_seconds: float = DEFAULT_STREAM_TIMEOUT_SECONDS


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.1


@dataclass(frozen=True)
class RateLimitConfig:
    storage: str = "memory://"
    strategy: str = "moving-window"
    on_storage_error: str = "allow"


@dataclass(frozen=True)
class RuntimeConfig:
    """Process settings that come only from the environment."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    workers: int = DEFAULT_WORKERS
    threads: int = DEFAULT_THREADS
    log_level: str = "INFO"
    log_format: str = "json"


@dataclass(frozen=True)
class Config:
    """Everything the proxy runs on, validated."""

    models: tuple[ModelConfig, ...] = ()
    default_model: str | None = None
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    tokens: tuple[TokenConfig, ...] = ()
    admin_token: str | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    source: str = "<built-in>"
    left_out: tuple[str, ...] = ()
    # Values that were brought into range (retry settings), one line each; the config still loads.
    warnings: tuple[str, ...] = ()

    # Client tokens as written in the file or AUTH_TOKEN (only their digests authenticate):
    # kept for scrubbing them from anything an upstream echoes back.
    client_secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def secret_values(self) -> list[str]:
        """Every secret the configuration holds, for the scrubber (app.redact)."""
        found = [*self.client_secrets, self.admin_token or "", self.server.metrics_token or ""]
        for model in self.models:
            found += credential_forms(model.token)
            found += header_secrets(model.headers)
            for url in (model.base_url, model.url, model.auth_url):
                found += url_secrets(url)
        found += url_secrets(self.rate_limits.storage)
        return [secret for secret in found if secret]


# ---------------------------------------------------------------------------------------------
# Go-style `url`s and model kinds.


def url_endpoint(url: str) -> tuple[str | None, str]:
    """A `url`'s endpoint suffix (`/chat/completions`, ...) or None, and the URL without it.

    The query string, if any, is kept on the remainder so that other endpoints built from it
    carry it too.
    """
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    for suffix, _kind in ENDPOINT_KINDS:
        if path.lower().endswith(suffix):
            root = urlunsplit(parts._replace(path=path[: -len(suffix)], fragment=""))
            return suffix, root
    return None, urlunsplit(parts._replace(path=path, fragment=""))


def is_api_root(url: str) -> bool:
    """True when `url` names an API root (`https://host`, `.../v1`, `.../openai`), no endpoint."""
    path = urlsplit(url).path.strip("/")
    return not path or bool(_API_ROOT_SEGMENT_RE.match(path.rsplit("/", 1)[-1]))


def _workers_ai_model(url: str) -> str | None:
    """The model id in a Workers AI `.../ai/run/<model>` URL."""
    path = urlsplit(url).path
    marker = "/ai/run/"
    return path.split(marker, 1)[1] if marker in path else None


def infer_kind(entry: Mapping) -> str:
    """chat, embedding or image: the entry's `kind`, else as the Go proxy decided.

    The Go proxy had no `kind`: its /image handler used the entries without
    `max_request_length`, posted to their `url` as written, with a payload chosen by provider.
    So: an image-only provider (airforce); a `url` that names its endpoint
    (`/images/generations`, `/embeddings`, `/chat/completions`); a text-to-image model id
    (flux, stable-diffusion, ... : Workers AI and OpenAI-compatible hosts); a Hugging Face
    inference `url` (`.../models/<id>`) that is not a chat endpoint; and, for the other
    OpenAI-compatible providers, an entry written for the Go /image handler (a `url` that is
    not an API root, request limits, no `max_request_length`, no category) is an image model.
    Everything else is chat.
    """
    if entry.get("kind"):
        return str(entry["kind"])
    provider = str(entry.get("provider") or "openai").lower()
    url = entry.get("url") if not entry.get("base_url") else None
    name = str(entry.get("name") or "")
    if provider in GO_IMAGE_PROVIDERS:
        return "image"
    if url:
        suffix, _root = url_endpoint(url)
        if suffix and provider not in NATIVE_PROVIDERS:
            return dict(ENDPOINT_KINDS)[suffix]
    if provider in NATIVE_PROVIDERS - {"cloudflare"}:
        return "chat"
    model_id = (url and _workers_ai_model(url)) if provider == "cloudflare" else None
    model_id = model_id or entry.get("model") or name.removeprefix(provider + "/")
    if _IMAGE_MODEL_RE.search(str(model_id)):
        return "image"
    if provider == "cloudflare" or not url or is_api_root(url):
        return "chat"
    if provider == "huggingface" and "/models/" in urlsplit(url).path:
        return "image"
    # Written for the Go proxy's /image: its request limits (which it needed to pick a model),
    # but no max_request_length or category (which it needed to pick a chat model).
    go_image_entry = (
        any(entry.get(f"requests_per_{window}") for window in ("minute", "hour", "day"))
        and not entry.get("max_request_length")
        and not (entry.get("model_size") or entry.get("categories"))
    )
    return "image" if go_image_entry else "chat"


# ---------------------------------------------------------------------------------------------
# marshmallow schemas for the file.


class Duration(fields.Field):
    """A duration as `500ms`, `2s` or plain seconds."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return parse_duration(value)
        except ValueError as err:
            raise ValidationError(str(err)) from err


def _limit():
    return fields.Integer(load_default=0, allow_none=True, validate=validate.Range(min=0))


def _money():
    return fields.Float(load_default=0.0, allow_none=True, validate=validate.Range(min=0))


def _positive_seconds(default: float):
    return fields.Float(load_default=default, validate=validate.Range(min=0, min_inclusive=False))


def _http_url(value: str) -> None:
    if not re.match(r"^https?://[^\s/]+", value):
        raise ValidationError("must be an http:// or https:// URL")


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class HttpClientSchema(_Strict):
    timeout_seconds = _positive_seconds(DEFAULT_TIMEOUT_SECONDS)
    connect_timeout_seconds = _positive_seconds(DEFAULT_CONNECT_TIMEOUT_SECONDS)
    idle_conn_timeout_seconds = _positive_seconds(DEFAULT_IDLE_CONN_TIMEOUT_SECONDS)


class ModelSchema(_Strict):
    name = fields.String(required=True, validate=validate.Length(min=1, max=256))
    provider = fields.String(load_default="openai", validate=validate.Length(min=1))
    base_url = fields.String(load_default=None, allow_none=True, validate=_http_url)
    url = fields.String(load_default=None, allow_none=True, validate=_http_url)
    token = fields.String(load_default=None, allow_none=True)
    model = fields.String(load_default=None, allow_none=True)
    priority = fields.Integer(load_default=0)
    weight = fields.Float(load_default=1.0, validate=validate.Range(min=0))
    requests_per_minute = _limit()
    requests_per_hour = _limit()
    requests_per_day = _limit()
    tokens_per_minute = _limit()
    tokens_per_day = _limit()
    max_request_length = _limit()
    context_window = _limit()
    model_size = fields.String(load_default=None, allow_none=True)
    categories = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)
    # Absent: inferred from the provider, `url` and model id as the Go proxy did (infer_kind).
    kind = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(MODEL_KINDS))
    input_cost_per_mtok = _money()
    output_cost_per_mtok = _money()
    strip_think = fields.Boolean(load_default=False)
    headers = fields.Dict(keys=fields.String(), values=fields.String(), load_default=dict)
    http_client_config = fields.Nested(HttpClientSchema, load_default=None, allow_none=True)
    api_version = fields.String(load_default=None, allow_none=True)
    auth_url = fields.String(load_default=None, allow_none=True, validate=_http_url)
    scope = fields.String(load_default=None, allow_none=True)
    ca_bundle = fields.String(load_default=None, allow_none=True)

    @post_load
    def make(self, data, **kwargs):
        http = data.pop("http_client_config", None) or {}
        for key in ("base_url", "url", "api_version", "auth_url", "scope", "ca_bundle"):
            if data.get(key) == "":
                data[key] = None
        if data.get("ca_bundle") and not Path(data["ca_bundle"]).is_file():
            raise ValidationError("no such file", "ca_bundle")
        data["provider"] = data["provider"].lower()
        data["categories"] = tuple(data["categories"])
        for key, value in list(data.items()):
            if value is None and key in _ZERO_WHEN_NONE:
                data[key] = 0
        data["kind"] = infer_kind(data)
        return ModelConfig(
            **data,
            timeout_seconds=http.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS),
            connect_timeout_seconds=http.get(
                "connect_timeout_seconds", DEFAULT_CONNECT_TIMEOUT_SECONDS
            ),
            idle_conn_timeout_seconds=http.get(
                "idle_conn_timeout_seconds", DEFAULT_IDLE_CONN_TIMEOUT_SECONDS
            ),
        )


_ZERO_WHEN_NONE = {
    "requests_per_minute",
    "requests_per_hour",
    "requests_per_day",
    "tokens_per_minute",
    "tokens_per_day",
    "max_request_length",
    "context_window",
    "input_cost_per_mtok",
    "output_cost_per_mtok",
    "budget_per_day",
    "budget_per_month",
}


class TokenSchema(_Strict):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    token = fields.String(load_default=None, allow_none=True)
    token_sha256 = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(r"^[0-9a-fA-F]{64}$", error="must be 64 hex characters"),
    )
    models = fields.List(fields.String(validate=validate.Length(min=1)), load_default=None)
    requests_per_minute = _limit()
    requests_per_hour = _limit()
    requests_per_day = _limit()
    tokens_per_minute = _limit()
    tokens_per_day = _limit()
    budget_per_day = _money()
    budget_per_month = _money()

    @validates_schema
    def one_secret(self, data, **kwargs):
        if bool(data.get("token")) == bool(data.get("token_sha256")):
            raise ValidationError("set exactly one of token and token_sha256", "token")

    @post_load
    def make(self, data, **kwargs):
        secret = data.pop("token")
        digest = data.pop("token_sha256")
        data["sha256"] = digest.lower() if digest else hash_token(secret)
        data["models"] = tuple(data["models"]) if data["models"] is not None else ("*",)
        for key, value in list(data.items()):
            if value is None and key in _ZERO_WHEN_NONE:
                data[key] = 0
        return TokenConfig(**data)


class AuthSchema(_Strict):
    tokens = fields.List(fields.Nested(TokenSchema), load_default=list)
    admin_token = fields.String(load_default=None, allow_none=True)


class ServerSchema(_Strict):
    max_body_bytes = fields.Integer(
        load_default=DEFAULT_MAX_BODY_BYTES, validate=validate.Range(min=1024)
    )
    metrics_token = fields.String(load_default=None, allow_none=True)
    cors_origins = fields.List(fields.String(validate=validate.Length(min=1)), load_default=list)

    @post_load
    def make(self, data, **kwargs):
        return ServerConfig(
            max_body_bytes=data["max_body_bytes"],
            metrics_token=data["metrics_token"] or None,
            cors_origins=tuple(data["cors_origins"]),
        )


class RoutingSchema(_Strict):
    strategy = fields.String(load_default="priority", validate=validate.OneOf(ROUTING_STRATEGIES))
    max_attempts = fields.Integer(load_default=5, validate=validate.Range(min=1, max=100))
    cooldown_seconds = fields.Float(load_default=60.0, validate=validate.Range(min=0))
    failure_threshold = fields.Integer(load_default=1, validate=validate.Range(min=1))
    request_timeout_seconds = _positive_seconds(DEFAULT_REQUEST_TIMEOUT_SECONDS)
    stream_timeout_seconds = _positive_seconds(DEFAULT_STREAM_TIMEOUT_SECONDS)

    @post_load
    def make(self, data, **kwargs):
        return RoutingConfig(**data)


class SignedDuration(fields.Field):
    """A Go duration that may be negative (`-1s`); ranges are applied later, with a warning."""

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return parse_go_duration(value)
        except ValueError as err:
            raise ValidationError(str(err)) from err


class RetrySchema(_Strict):
    # No ranges here: out-of-range values are clamped with a warning (clamp_retry), as the Go
    # proxy started with them too; only a value that does not parse stops start-up.
    max_retries = fields.Integer(load_default=3, strict=False)
    base_delay = SignedDuration(load_default=1.0)
    max_delay = SignedDuration(load_default=30.0)
    jitter = fields.Float(load_default=0.1, allow_nan=False)

    @post_load
    def make(self, data, **kwargs):
        return RetryConfig(**data)


def _storage_uri(value: str) -> None:
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in STORAGE_SCHEMES:
        raise ValidationError(f"scheme must be one of {', '.join(STORAGE_SCHEMES)}")


class RateLimitSchema(_Strict):
    storage = fields.String(load_default="memory://", validate=_storage_uri)
    strategy = fields.String(
        load_default="moving-window", validate=validate.OneOf(RATE_LIMIT_STRATEGIES)
    )
    on_storage_error = fields.String(
        load_default="allow", validate=validate.OneOf(("allow", "deny"))
    )

    @post_load
    def make(self, data, **kwargs):
        return RateLimitConfig(**data)


class AliasMembers(fields.Field):
    """An alias names one model or a list of them, tried in order."""

    def _deserialize(self, value, attr, data, **kwargs):
        members = [value] if isinstance(value, str) else value
        if (
            not isinstance(members, list)
            or not members
            or not all(isinstance(m, str) and m for m in members)
        ):
            raise ValidationError("must be a model name or a non-empty list of them")
        return tuple(members)


class ConfigSchema(_Strict):
    default_model = fields.String(load_default=None, allow_none=True)
    server = fields.Nested(ServerSchema, load_default=None, allow_none=True)
    auth = fields.Nested(AuthSchema, load_default=None, allow_none=True)
    models = fields.List(fields.Nested(ModelSchema), load_default=list)
    aliases = fields.Dict(keys=fields.String(), values=AliasMembers(), load_default=dict)
    routing = fields.Nested(RoutingSchema, load_default=None, allow_none=True)
    retry = fields.Nested(RetrySchema, load_default=None, allow_none=True)
    rate_limits = fields.Nested(RateLimitSchema, load_default=None, allow_none=True)


# ---------------------------------------------------------------------------------------------
# Loading.


def interpolate(value: object, env: Mapping[str, str], path: str, unset: set[str]) -> object:
    """Replace `${VAR}` and `${VAR:-default}` in every string; note paths naming unset variables."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def substitute(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
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


def flatten_errors(messages: object, path: str = "") -> list[str]:
    """Turn marshmallow's nested error dict into `models[2].url: ...` lines."""
    if isinstance(messages, dict):
        lines = []
        for key, inner in messages.items():
            if key == "_schema":
                child = path
            elif isinstance(key, int):
                child = f"{path}[{key}]"
            else:
                child = f"{path}.{key}" if path else str(key)
            lines.extend(flatten_errors(inner, child))
        return lines
    if isinstance(messages, list):
        if all(isinstance(item, str) for item in messages):
            return [f"{path or '<root>'}: {'; '.join(messages)}"]
        return [line for item in messages for line in flatten_errors(item, path)]
    return [f"{path or '<root>'}: {messages}"]


def deep_merge(base: dict, extra: Mapping) -> dict:
    """`extra` over `base`: dicts merge, everything else (lists included) replaces."""
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_env_file(path: str | None = None) -> str | None:
    """Load `.env` from `path`, AI_PROXY_ENV_FILE or ./.env; real environment variables win."""
    chosen = path or os.environ.get("AI_PROXY_ENV_FILE") or ".env"
    if not Path(chosen).is_file():
        if path:
            raise ConfigError([f"--env-file {path}: no such file"])
        return None
    load_dotenv(chosen, override=False)
    return chosen


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
        Path(__file__).resolve().parent.parent / DEFAULT_CONFIG_PATH,
    ):
        if candidate.is_file():
            return candidate
    return None


def read_config_file(path: Path) -> dict:
    """Parse the YAML file into a dict; problems are ConfigErrors naming the file."""
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError([f"{path}: larger than {MAX_CONFIG_BYTES} bytes"])
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError([f"{path}: cannot read: {err.strerror or err}"]) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError([f"{path}:{where}: {problem}"]) from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping"])
    return data


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
    try:
        loaded = ConfigSchema().load(data)
    except ValidationError as err:
        problems.extend(flatten_errors(err.messages))
        raise ConfigError(problems) from None

    left_out: list[str] = []
    models = []
    for index, model in enumerate(loaded["models"]):
        if f"models[{index}].token" in unset:
            left_out.append(f"models[{index}] ({model.name}): its token variable is not set")
            continue
        models.append(replace(model, index=index))

    auth = loaded["auth"] or {"tokens": [], "admin_token": None}
    tokens = []
    for index, token in enumerate(auth["tokens"]):
        if f"auth.tokens[{index}].token" in unset:
            left_out.append(f"auth.tokens[{index}] ({token.name}): its token variable is not set")
            continue
        tokens.append(token)
    auth_token = env.get("AUTH_TOKEN")
    if auth_token:
        tokens.append(TokenConfig(name="default", sha256=hash_token(auth_token)))
    retry, retry_names = _retry_from_env(loaded["retry"] or RetryConfig(), env, problems)
    retry, warnings = clamp_retry(retry, retry_names)
    client_secrets = [
        entry["token"]
        for index, entry in enumerate(_token_entries(data))
        if isinstance(entry, dict)
        and isinstance(entry.get("token"), str)
        and f"auth.tokens[{index}].token" not in unset
    ]

    config = Config(
        models=tuple(models),
        default_model=loaded["default_model"] or None,
        aliases=dict(loaded["aliases"]),
        tokens=tuple(tokens),
        admin_token=auth["admin_token"] or None,
        server=loaded["server"] or ServerConfig(),
        routing=loaded["routing"] or RoutingConfig(),
        retry=retry,
        rate_limits=_rate_limits_from_env(
            loaded["rate_limits"] or RateLimitConfig(), env, problems
        ),
        runtime=runtime,
        source=source,
        left_out=tuple(left_out),
        warnings=tuple(warnings),
        client_secrets=tuple(filter(None, [*client_secrets, auth_token])),
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


def _cross_check(config: Config, all_models: list[ModelConfig]) -> list[str]:
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


def _env_int(env, name, default, low, high, problems) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        problems.append(f"{name}: must be an integer, got {raw!r}")
        return default
    if not low <= value <= high:
        problems.append(f"{name}: must be between {low} and {high}, got {value}")
        return default
    return value


def _env_choice(env, name, default, choices, problems, upper=False) -> str:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        problems.append(f"{name}: must be one of {', '.join(choices)}, got {raw!r}")
        return default
    return value


def runtime_from_env(env: Mapping[str, str], problems: list[str]) -> RuntimeConfig:
    """HOST, PORT, WEB_CONCURRENCY, THREADS, LOG_LEVEL, LOG_FORMAT; faults go to `problems`."""
    host = (env.get("HOST") or DEFAULT_HOST).strip()
    if not re.match(r"^[A-Za-z0-9.:\[\]-]+$", host):
        problems.append(f"HOST: not a host name or address: {host!r}")
    return RuntimeConfig(
        host=host,
        port=_env_int(env, "PORT", DEFAULT_PORT, 0, 65535, problems),
        workers=_env_int(env, "WEB_CONCURRENCY", DEFAULT_WORKERS, 1, 256, problems),
        threads=_env_int(env, "THREADS", DEFAULT_THREADS, 1, 10000, problems),
        log_level=_env_choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS, problems, upper=True),
        log_format=_env_choice(env, "LOG_FORMAT", "json", LOG_FORMATS, problems),
    )


_GO_INT_RE = re.compile(r"^[+-]?\d+$")


def _retry_from_env(
    retry: RetryConfig, env: Mapping[str, str], problems: list[str]
) -> tuple[RetryConfig, dict[str, str]]:
    """RETRY_* over `retry:`; returns the settings and, per field, the name that set it."""
    changes: dict = {}
    names = {key: f"retry.{key}" for key in ("max_retries", "base_delay", "max_delay", "jitter")}
    raw = (env.get("RETRY_MAX_RETRIES") or "").strip()
    if raw:
        # strconv.Atoi's form: digits with an optional sign (Python's int() would take `1_0`).
        if _GO_INT_RE.match(raw):
            changes["max_retries"] = int(raw)
            names["max_retries"] = "RETRY_MAX_RETRIES"
        else:
            problems.append(f"RETRY_MAX_RETRIES: must be an integer, got {raw!r}")
    for name, key in (("RETRY_BASE_DELAY", "base_delay"), ("RETRY_MAX_DELAY", "max_delay")):
        raw = (env.get(name) or "").strip()
        if raw:
            try:
                changes[key] = parse_go_duration(raw)
                names[key] = name
            except ValueError as err:
                problems.append(f"{name}: {err}")
    raw = (env.get("RETRY_JITTER") or "").strip()
    if raw:
        try:
            if "_" in raw:
                raise ValueError
            jitter = float(raw)
            if not math.isfinite(jitter):
                raise ValueError
            changes["jitter"] = jitter
            names["jitter"] = "RETRY_JITTER"
        except ValueError:
            problems.append(f"RETRY_JITTER: must be a number from 0 to 1, got {raw!r}")
    return replace(retry, **changes), names


def clamp_retry(
    retry: RetryConfig, names: Mapping[str, str] | None = None
) -> tuple[RetryConfig, list[str]]:
    """Bring retry settings into range, one warning line per change.

    The Go proxy took any number here; what it did with one out of range is what the clamp
    keeps: a negative count or delay meant none, every delay was capped at max_delay (so a
    base_delay above it waited max_delay), and jitter is a fraction of the delay.
    """
    names = names or {}
    warnings: list[str] = []

    def name(key: str) -> str:
        return names.get(key, f"retry.{key}")

    max_retries = retry.max_retries
    if max_retries < 0 or max_retries > MAX_RETRIES:
        clamped = min(max(max_retries, 0), MAX_RETRIES)
        warnings.append(
            f"{name('max_retries')}: {max_retries} is outside 0..{MAX_RETRIES}; using {clamped}"
        )
        max_retries = clamped
    delays = {}
    for key in ("base_delay", "max_delay"):
        value = getattr(retry, key)
        if value < 0:
            warnings.append(f"{name(key)}: {format_duration(value)} is negative; using 0s")
            value = 0.0
        delays[key] = value
    if delays["max_delay"] < delays["base_delay"]:
        top = format_duration(delays["max_delay"])
        warnings.append(
            f"{name('base_delay')}: {format_duration(delays['base_delay'])} is above "
            f"{name('max_delay')} {top}, which caps every retry's wait; using {top}"
        )
        delays["base_delay"] = delays["max_delay"]
    jitter = retry.jitter
    if not 0 <= jitter <= 1:
        clamped = min(max(jitter, 0.0), 1.0)
        warnings.append(f"{name('jitter')}: {jitter:g} is outside 0..1; using {clamped:g}")
        jitter = clamped
    clamped_retry = RetryConfig(
        max_retries=max_retries,
        base_delay=delays["base_delay"],
        max_delay=delays["max_delay"],
        jitter=jitter,
    )
    return clamped_retry, warnings


def _rate_limits_from_env(limits: RateLimitConfig, env: Mapping[str, str], problems: list[str]):
    storage = env.get("RATE_LIMIT_STORAGE")
    if not storage:
        return limits
    try:
        _storage_uri(storage)
    except ValidationError:
        problems.append(
            f"RATE_LIMIT_STORAGE: the scheme must be one of {', '.join(STORAGE_SCHEMES)}"
        )
        return limits
    return replace(limits, storage=storage)
