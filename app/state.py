"""The per-app state the blueprints work with, kept in `app.extensions["ai_proxy"]`."""

from __future__ import annotations

import contextvars
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import redact
from .activity import Activity, make_board
from .auth import Authenticator
from .cache import ResponseCache
from .config import Config, TokenConfig
from .cooldown import Cooldowns, MemoryBreakers, RedisBreakers
from .providers import build_providers
from .ratelimit import Quotas, make_storage, redis_client, window_count
from .response_store import ResponseStore, make_response_store, storage_uri
from .routing import Router
from .statuspage.shared import live_numbers
from .upstream import UpstreamPool

if TYPE_CHECKING:
    from flask import Request

EXTENSION_KEY = "ai_proxy"


@dataclass
class ProxyState:
    config: Config
    authenticator: Authenticator
    router: Router
    pool: UpstreamPool
    quotas: Quotas
    url_prefix: str = ""
    started: float = field(default_factory=time.time)
    responses: ResponseStore | None = None  # stored Responses (/v1/responses)
    activity: Activity = field(default_factory=Activity)  # the status page's shared numbers
    cache: ResponseCache | None = None  # the response cache, when `cache.enabled`


@dataclass
class RequestState:
    """One request's state, kept on `flask.g` as `g.ai_proxy` from its start to its log line."""

    request_id: str
    started: float  # time.perf_counter() at its start
    record: dict  # the fields of its access log line
    counted: bool  # whether it counts in the in-flight gauge (probes and scrapes do not)
    span: object = None  # its tracing span, if tracing is on
    token: TokenConfig | None = None  # the client token, once authenticated
    proxy: ProxyState | None = None  # the app's state, for lookups without `current_app`
    request: Request | None = None  # the request behind `flask.request`, without its proxy


# The request this thread serves (set as it begins, cleared at its teardown): one context
# variable read instead of werkzeug's `g` / `current_app` proxies, a few times per request.
CURRENT_REQUEST: contextvars.ContextVar[RequestState | None] = contextvars.ContextVar(
    "ai_proxy_request", default=None
)


def build_state(config: Config, url_prefix: str = "") -> ProxyState:
    """Wire the services for one app from a validated config; raises ConfigError."""
    # Before anything can fail or log: every secret of this config is scrubbed from then on.
    redact.register([*config.secret_values(), os.environ.get("AI_PROXY_SECRET_KEY")])
    redact.install_on_loggers(__name__.rpartition(".")[0])
    pool = UpstreamPool(config.retry, pool_size=config.runtime.threads)
    providers = build_providers(config.models, pool)
    storage = make_storage(config.rate_limits.storage, window_count(config))
    quotas = Quotas(config, storage)
    client = redis_client(storage)
    # With Redis, cooldowns are shared like quotas; otherwise each worker keeps its own.
    cooldowns = Cooldowns(
        RedisBreakers(client) if client is not None else MemoryBreakers(),
        threshold=config.routing.failure_threshold,
        cooldown_seconds=config.routing.cooldown_seconds,
        probe_seconds=config.routing.request_timeout_seconds,
    )
    state = ProxyState(
        config=config,
        authenticator=Authenticator(config.tokens),
        router=Router(config, providers, cooldowns, quotas),
        pool=pool,
        quotas=quotas,
        url_prefix=url_prefix,
        responses=make_response_store(
            storage_uri(config), config.responses.ttl_seconds, config.responses.max_memory_bytes
        ),
        activity=Activity(make_board(client)),
        cache=(
            ResponseCache.from_config(config.cache, config.routing.request_timeout_seconds)
            if config.cache.enabled
            else None
        ),
    )
    state.activity.live = lambda: live_numbers(state)
    state.router.activity = state.activity
    return state
