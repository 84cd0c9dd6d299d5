"""The per-app state the blueprints work with, kept in `app.extensions["ai_proxy"]`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from app.auth import Authenticator
from app.config import Config
from app.providers import build_providers
from app.routing import Router
from app.upstream import UpstreamPool

EXTENSION_KEY = "ai_proxy"


@dataclass
class ProxyState:
    config: Config
    authenticator: Authenticator
    router: Router
    pool: UpstreamPool
    url_prefix: str = ""
    started: float = field(default_factory=time.time)


def build_state(config: Config, url_prefix: str = "") -> ProxyState:
    """Wire the services for one app from a validated config; raises ConfigError."""
    pool = UpstreamPool(config.retry, pool_size=config.runtime.threads)
    providers = build_providers(config.models, pool)
    return ProxyState(
        config=config,
        authenticator=Authenticator(config.tokens),
        router=Router(config, providers),
        pool=pool,
        url_prefix=url_prefix,
    )
