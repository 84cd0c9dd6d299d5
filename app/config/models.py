"""The typed, frozen configuration the proxy runs on; each setting's default is its schema's."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..config import schema as s
from ..redact import credential_forms, header_secrets, url_secrets


def declared_by(
    *schemas: type[s.Declared], loads: bool = True, own: tuple[str, ...] = ()
) -> Callable[[type], type]:
    """Make a frozen dataclass whose fields take their defaults from `schemas`.

    A field a schema declares gets that field's `load_default` (a factory stays a factory);
    writing a default for it in the class body as well is refused, so that no default is
    written twice. `own` names the fields whose class default means something else than the
    schema's (the schema's says "not given"). With `loads`, the first schema loads into the
    dataclass.
    """

    def bind(cls: type) -> type:
        declared = {name: f for schema in schemas for name, f in schema._declared_fields.items()}
        for name in cls.__annotations__:
            source = declared.get(name)
            if source is None or name in own:
                continue
            if name in cls.__dict__:
                raise TypeError(f"{cls.__name__}.{name}: its default is declared by the schema")
            default = source.load_default
            if source.required or default is s.missing:
                continue
            setattr(cls, name, field(default_factory=default) if callable(default) else default)
        made = dataclass(frozen=True)(cls)
        made.__declared_by__ = schemas
        if loads:
            schemas[0].target = made
        return made

    return bind


@declared_by(s.ModelSchema, s.HttpClientSchema, own=("kind",))
class ModelConfig:
    """One configured deployment (an entry of `models:`)."""

    name: str
    provider: str
    base_url: str | None
    url: str | None
    token: str | None
    model: str | None
    priority: int
    weight: float
    requests_per_minute: int
    requests_per_hour: int
    requests_per_day: int
    tokens_per_minute: int
    tokens_per_day: int
    max_request_length: int
    context_window: int
    model_size: str | None
    categories: tuple[str, ...]
    # A deployment built in code is a chat model; one loaded from the file has its kind inferred.
    kind: str = "chat"
    input_cost_per_mtok: float
    output_cost_per_mtok: float
    strip_think: bool
    responses: bool
    headers: Mapping[str, str]
    timeout_seconds: float
    connect_timeout_seconds: float
    idle_conn_timeout_seconds: float
    api_version: str | None
    auth_url: str | None
    scope: str | None
    ca_bundle: str | None
    cache: bool
    # Its place in `models:`, set by load_config: not a setting.
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


@declared_by(s.TokenSchema)
class TokenConfig:
    """A client token; only its SHA-256 digest is kept."""

    name: str
    sha256: str
    models: tuple[str, ...]
    requests_per_minute: int
    requests_per_hour: int
    requests_per_day: int
    tokens_per_minute: int
    tokens_per_day: int
    budget_per_day: float
    budget_per_month: float


@declared_by(s.ServerSchema)
class ServerConfig:
    max_body_bytes: int
    metrics_token: str | None
    cors_origins: tuple[str, ...]


@declared_by(s.RoutingSchema)
class RoutingConfig:
    strategy: str
    max_attempts: int
    cooldown_seconds: float
    failure_threshold: int
    request_timeout_seconds: float
    stream_timeout_seconds: float


@declared_by(s.RetrySchema)
class RetryConfig:
    max_retries: int
    base_delay: float
    max_delay: float
    jitter: float


@declared_by(s.RateLimitSchema)
class RateLimitConfig:
    storage: str
    strategy: str
    on_storage_error: str
    default_reserve_tokens: int


@declared_by(s.ResponsesSchema)
class ResponsesConfig:
    """Stored Responses: `storage` None means the cache's, else the rate-limit storage."""

    storage: str | None
    ttl_seconds: float
    max_memory_bytes: int


@declared_by(s.CacheSchema)
class CacheConfig:
    enabled: bool
    storage: str
    ttl_seconds: int
    max_memory_bytes: int
    scope: str


@declared_by(s.RuntimeSchema)
class RuntimeConfig:
    """Process settings that come only from the environment."""

    host: str
    port: int
    workers: int
    threads: int
    log_level: str
    log_format: str


# Built by load_config from the loaded sections, the environment and what was left out.
@declared_by(s.ConfigSchema, s.AuthSchema, loads=False)
class Config:
    """Everything the proxy runs on, validated."""

    models: tuple[ModelConfig, ...]
    default_model: str | None
    aliases: Mapping[str, tuple[str, ...]]
    tokens: tuple[TokenConfig, ...]
    admin_token: str | None
    server: ServerConfig
    routing: RoutingConfig
    retry: RetryConfig
    rate_limits: RateLimitConfig
    responses: ResponsesConfig
    cache: CacheConfig
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
        found += url_secrets(self.responses.storage)
        found += url_secrets(self.cache.storage)
        return [secret for secret in found if secret]
