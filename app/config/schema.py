"""The declaration of every setting: its type, default and validation, as marshmallow schemas.

A schema bound to a frozen dataclass (app.config.models) loads into it, and the dataclass takes
its defaults from here, so each default is written once.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)
from marshmallow.utils import missing

from ..config.durations import parse_duration, parse_go_duration
from ..config.goconf import MODEL_KINDS, infer_kind

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_WORKERS = 1
DEFAULT_THREADS = 64
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0
DEFAULT_IDLE_CONN_TIMEOUT_SECONDS = 90.0
# Longest a request may spend on retries and fallbacks before its first byte.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 300.0
# Longest a stream may run in all.
DEFAULT_STREAM_TIMEOUT_SECONDS = 1800.0
DEFAULT_RESPONSES_TTL_SECONDS = 86400.0
DEFAULT_RESPONSES_MEMORY_BYTES = 64 * 1024 * 1024

ROUTING_STRATEGIES = ("priority", "weighted", "least-busy", "latency")
RATE_LIMIT_STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+sentinel", "redis+cluster", "memcached")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")
CACHE_SCHEMES = ("memory", "redis", "rediss")
CACHE_SCOPES = ("token", "shared")
DEFAULT_CACHE_TTL_SECONDS = 3600
DEFAULT_CACHE_MAX_MEMORY_BYTES = 64 * 1024 * 1024


def hash_token(token: str) -> str:
    """The SHA-256 hex digest that `token_sha256` holds for a client token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def default_of(field: fields.Field) -> object:
    """A field's `load_default`, made afresh where it is a factory (`list`, a nested schema)."""
    value = field.load_default
    return value() if callable(value) else value


# ---------------------------------------------------------------------------------------------
# Field types.


class WholeNumber(fields.Integer):
    """An integer, as marshmallow's Integer reads one, except that a number with a fraction is
    refused rather than cut (`requests_per_minute: 0.5` would be 0: no limit at all)."""

    def _validated(self, value):
        if isinstance(value, float) and not value.is_integer():
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class Duration(fields.Field):
    """A duration as `500ms`, `2s` or plain seconds."""

    parse = staticmethod(parse_duration)

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            return self.parse(value)
        except ValueError as err:
            raise ValidationError(str(err)) from err


class SignedDuration(Duration):
    """A Go duration that may be negative (`-1s`); ranges are applied later, with a warning."""

    parse = staticmethod(parse_go_duration)


class Tuple(fields.List):
    """A YAML list, kept as a tuple so that the frozen config holds nothing mutable."""

    def _deserialize(self, value, attr, data, **kwargs):
        return tuple(super()._deserialize(value, attr, data, **kwargs))


class OptionalString(fields.String):
    """A string where empty (`${UNSET:-}`) means not set."""

    def _deserialize(self, value, attr, data, **kwargs):
        return super()._deserialize(value, attr, data, **kwargs) or None


class Choice(fields.String):
    """One of `choices`, in any case (`TEXT`, `text`); loaded in the case the choices have."""

    def __init__(self, choices: tuple[str, ...], **kwargs) -> None:
        self.choices = choices
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        chosen = text.upper() if self.choices[0].isupper() else text.lower()
        if chosen not in self.choices:
            raise ValidationError(f"must be one of {', '.join(self.choices)}, got {value!r}")
        return chosen


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


def _names(default: tuple[str, ...] = (), **kwargs) -> Tuple:
    return Tuple(fields.String(validate=validate.Length(min=1)), load_default=default, **kwargs)


def _limit() -> WholeNumber:
    # null reads as the default, 0: no limit.
    return WholeNumber(load_default=0, allow_none=True, validate=validate.Range(min=0))


def _money() -> fields.Float:
    return fields.Float(load_default=0.0, allow_none=True, validate=validate.Range(min=0))


# The longest a stored answer may be kept (a response, a cached answer): a year and a day.
MAX_RETENTION_SECONDS = 366 * 24 * 3600.0
# The longest any configured wait may be (a timeout, a cooldown): a week. Beyond it a number is a
# typo, and some (1e308) are no time a clock or a socket can take.
MAX_SECONDS = 7 * 24 * 3600.0


def _positive_seconds(default: float) -> fields.Float:
    return fields.Float(
        load_default=default,
        validate=validate.Range(min=0, min_inclusive=False, max=MAX_SECONDS),
    )


def _bounded_int(default: int, low: int, high: int) -> WholeNumber:
    return WholeNumber(
        load_default=default,
        validate=validate.Range(low, high, error="must be between {min} and {max}, got {input}"),
        error_messages={"invalid": "must be an integer, got {input!r}"},
    )


def _http_url(value: str) -> None:
    if not re.match(r"^https?://[^\s/]+", value) or any(c.isspace() for c in value):
        raise ValidationError("must be an http:// or https:// URL")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
    except ValueError:
        raise ValidationError(
            "must be an http:// or https:// URL with a valid host and port"
        ) from None
    if not parts.hostname:
        raise ValidationError("must be an http:// or https:// URL with a host")


def _api_root_url(value: str) -> None:
    """A `base_url`: an http(s) URL the adapter appends its paths to, so a query or fragment
    in it could never reach the provider (it was dropped without a word)."""
    _http_url(value)
    parts = urlsplit(value)
    if parts.query or parts.fragment or value.rstrip().endswith(("?", "#")):
        raise ValidationError(
            "must not hold a query or fragment: the adapter appends its paths to it (put "
            "credentials in token or headers)"
        )


def _header_values(value: dict) -> None:
    """Header names a server reads (tokens) and values with no line breaks or NUL in them: such
    a header fails every request it is sent with."""
    for name, text in value.items():
        if len(name) > MAX_HEADER_NAME_CHARS or not HEADER_NAME_RE.fullmatch(name):
            raise ValidationError(f"{name!r} is not a header name")
        if any(c in text for c in "\r\n\0"):
            raise ValidationError(f"the value of {name!r} holds a line break or NUL")


# A header name (an RFC 9110 token); also what a CORS preflight may name (app.extension).
HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
MAX_HEADER_NAME_CHARS = 256


def _storage_uri(value: str) -> None:
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in STORAGE_SCHEMES:
        raise ValidationError(f"scheme must be one of {', '.join(STORAGE_SCHEMES)}")


def _section(schema: type[Schema]) -> fields.Nested:
    """A nested section; absent or null, it holds its schema's defaults."""
    return fields.Nested(schema, load_default=lambda: schema().load({}), allow_none=True)


# ---------------------------------------------------------------------------------------------
# Schemas.


class Declared(Schema):
    """Strict (an unknown key is an error); loads into `target` where a dataclass is bound.

    A null value of a field that has a default reads as that default, so `retry:` left empty
    or `requests_per_minute: ~` mean the same as leaving them out.
    """

    target: ClassVar[type | None] = None

    class Meta:
        unknown = RAISE

    def normalise(self, data: dict) -> dict:
        """Rules that span fields, run after every field has loaded; the default does nothing."""
        return data

    @post_load
    def finish(self, data: dict, **kwargs) -> object:
        for name, value in data.items():
            field = self.fields[name]
            if value is None and field.load_default not in (None, missing):
                data[name] = default_of(field)
        data = self.normalise(data)
        return self.target(**data) if self.target else data


class HttpClientSchema(Declared):
    timeout_seconds = _positive_seconds(DEFAULT_TIMEOUT_SECONDS)
    connect_timeout_seconds = _positive_seconds(DEFAULT_CONNECT_TIMEOUT_SECONDS)
    idle_conn_timeout_seconds = _positive_seconds(DEFAULT_IDLE_CONN_TIMEOUT_SECONDS)


class QuotaSchema(Declared):
    """The request and token quotas a deployment and a client token both have; 0: no limit."""

    requests_per_minute = _limit()
    requests_per_hour = _limit()
    requests_per_day = _limit()
    tokens_per_minute = _limit()
    tokens_per_day = _limit()


class ModelSchema(QuotaSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=256))
    provider = fields.String(load_default="openai", validate=validate.Length(min=1))
    base_url = fields.String(load_default=None, allow_none=True, validate=_api_root_url)
    url = fields.String(load_default=None, allow_none=True, validate=_http_url)
    token = fields.String(load_default=None, allow_none=True)
    model = fields.String(load_default=None, allow_none=True)
    priority = WholeNumber(load_default=0)
    weight = fields.Float(load_default=1.0, validate=validate.Range(min=0))
    max_request_length = _limit()
    context_window = _limit()
    model_size = fields.String(load_default=None, allow_none=True)
    categories = _names()
    # Absent: inferred from the provider, `url` and model id as the Go proxy did (infer_kind).
    kind = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(MODEL_KINDS))
    input_cost_per_mtok = _money()
    output_cost_per_mtok = _money()
    strip_think = fields.Boolean(load_default=False)
    # The deployment serves OpenAI's Responses API itself: /v1/responses is passed through.
    responses = fields.Boolean(load_default=False)
    headers = fields.Dict(
        keys=fields.String(), values=fields.String(), load_default=dict, validate=_header_values
    )
    http_client_config = _section(HttpClientSchema)
    # Provider-specific: Azure's API version; GigaChat's OAuth endpoint, scope and CA bundle.
    api_version = OptionalString(load_default=None, allow_none=True)
    auth_url = fields.String(load_default=None, allow_none=True, validate=_http_url)
    scope = OptionalString(load_default=None, allow_none=True)
    ca_bundle = OptionalString(load_default=None, allow_none=True)
    # false: this deployment's answers are never stored in the response cache.
    cache = fields.Boolean(load_default=True)

    def normalise(self, data: dict) -> dict:
        # The timeouts sit under http_client_config in the file, flat on the deployment.
        data.update(data.pop("http_client_config"))
        if data["ca_bundle"] and not Path(data["ca_bundle"]).is_file():
            raise ValidationError("no such file", "ca_bundle")
        data["provider"] = data["provider"].lower()
        data["kind"] = infer_kind(data)
        return data


class TokenSchema(QuotaSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    token = fields.String(load_default=None, allow_none=True)
    token_sha256 = fields.String(
        load_default=None,
        allow_none=True,
        validate=validate.Regexp(r"^[0-9a-fA-F]{64}$", error="must be 64 hex characters"),
    )
    # Allowed public names, aliases and categories (globs); absent or null: all of them.
    models = _names(("*",), allow_none=True)
    budget_per_day = _money()
    budget_per_month = _money()

    @validates_schema
    def one_secret(self, data, **kwargs):
        if bool(data.get("token")) == bool(data.get("token_sha256")):
            raise ValidationError("set exactly one of token and token_sha256", "token")

    def normalise(self, data: dict) -> dict:
        # Only the digest is kept: the token itself never reaches the config object.
        secret = data.pop("token")
        digest = data.pop("token_sha256")
        data["sha256"] = digest.lower() if digest else hash_token(secret)
        return data


class AuthSchema(Declared):
    tokens = Tuple(fields.Nested(TokenSchema), load_default=())
    admin_token = OptionalString(load_default=None, allow_none=True)


class ServerSchema(Declared):
    max_body_bytes = WholeNumber(
        load_default=DEFAULT_MAX_BODY_BYTES, validate=validate.Range(min=1024)
    )
    metrics_token = OptionalString(load_default=None, allow_none=True)
    cors_origins = _names()


class RoutingSchema(Declared):
    strategy = fields.String(load_default="priority", validate=validate.OneOf(ROUTING_STRATEGIES))
    max_attempts = WholeNumber(load_default=5, validate=validate.Range(min=1, max=100))
    cooldown_seconds = fields.Float(
        load_default=60.0, validate=validate.Range(min=0, max=MAX_SECONDS)
    )
    failure_threshold = WholeNumber(load_default=1, validate=validate.Range(min=1))
    request_timeout_seconds = _positive_seconds(DEFAULT_REQUEST_TIMEOUT_SECONDS)
    stream_timeout_seconds = _positive_seconds(DEFAULT_STREAM_TIMEOUT_SECONDS)


class RetrySchema(Declared):
    # No ranges here: out-of-range values are clamped with a warning (clamp_retry), as the Go
    # proxy started with them too; only a value that does not parse stops start-up.
    max_retries = WholeNumber(load_default=3, strict=False)
    base_delay = SignedDuration(load_default=1.0)
    max_delay = SignedDuration(load_default=30.0)
    jitter = fields.Float(load_default=0.1, allow_nan=False)


class RateLimitSchema(Declared):
    storage = fields.String(load_default="memory://", validate=_storage_uri)
    strategy = fields.String(
        load_default="moving-window", validate=validate.OneOf(RATE_LIMIT_STRATEGIES)
    )
    on_storage_error = fields.String(
        load_default="allow", validate=validate.OneOf(("allow", "deny"))
    )
    # Output tokens reserved for a request that sets no max_tokens (or its surface's spelling).
    default_reserve_tokens = WholeNumber(
        load_default=1024, strict=True, validate=validate.Range(min=1, max=10**9)
    )


class ResponsesSchema(Declared):
    """Stored Responses (`/v1/responses`): where, for how long, and how much in memory."""

    # Absent: the cache's storage when the cache is on, else the rate-limit storage.
    storage = OptionalString(load_default=None, allow_none=True, validate=_storage_uri)
    # A retention, not a wait: as long as the cache's (OpenAI keeps responses 30 days).
    ttl_seconds = fields.Float(
        load_default=DEFAULT_RESPONSES_TTL_SECONDS,
        validate=validate.Range(min=0, min_inclusive=False, max=MAX_RETENTION_SECONDS),
    )
    max_memory_bytes = WholeNumber(
        load_default=DEFAULT_RESPONSES_MEMORY_BYTES, validate=validate.Range(min=1024)
    )


def _cache_uri(value: str) -> None:
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in CACHE_SCHEMES:
        raise ValidationError(f"scheme must be one of {', '.join(CACHE_SCHEMES)}")


class CacheSchema(Declared):
    """The response cache (off by default)."""

    enabled = fields.Boolean(load_default=False)
    storage = fields.String(load_default="memory://", validate=_cache_uri)
    ttl_seconds = WholeNumber(
        load_default=DEFAULT_CACHE_TTL_SECONDS, validate=validate.Range(min=1, max=366 * 86400)
    )
    # memory:// only: answers are dropped, least recently used first, past this many bytes.
    max_memory_bytes = WholeNumber(
        load_default=DEFAULT_CACHE_MAX_MEMORY_BYTES, validate=validate.Range(min=1024)
    )
    scope = Choice(CACHE_SCOPES, load_default="token")


class RuntimeSchema(Declared):
    """Process settings; they come only from the environment (app.config.env.RUNTIME_ENV)."""

    host = fields.String(
        load_default=DEFAULT_HOST,
        validate=validate.Regexp(
            r"^[A-Za-z0-9.:\[\]-]+$", error="not a host name or address: {input!r}"
        ),
    )
    port = _bounded_int(DEFAULT_PORT, 0, 65535)
    workers = _bounded_int(DEFAULT_WORKERS, 1, 256)
    threads = _bounded_int(DEFAULT_THREADS, 1, 10000)
    log_level = Choice(LOG_LEVELS, load_default="INFO")
    log_format = Choice(LOG_FORMATS, load_default="json")


class ConfigSchema(Declared):
    default_model = OptionalString(load_default=None, allow_none=True)
    server = _section(ServerSchema)
    auth = _section(AuthSchema)
    models = Tuple(fields.Nested(ModelSchema), load_default=())
    aliases = fields.Dict(keys=fields.String(), values=AliasMembers(), load_default=dict)
    routing = _section(RoutingSchema)
    retry = _section(RetrySchema)
    rate_limits = _section(RateLimitSchema)
    responses = _section(ResponsesSchema)
    cache = _section(CacheSchema)
