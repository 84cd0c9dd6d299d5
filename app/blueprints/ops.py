"""Operator endpoints: Prometheus `/metrics`, `/admin/status` and `DELETE /admin/cache`."""

from __future__ import annotations

import hmac
import time

from flask import Blueprint, Response, request

from .. import metrics
from ..auth import extract_token, token_bytes
from ..blueprints.common import json_response, proxy_state
from ..cache import StorageFailure
from ..errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    StorageUnavailableError,
)
from ..ratelimit import Owner
from ..statuspage.session import METRICS_SCOPE, blocked_for, count_wrong_token, signed_in
from ..statuspage.shared import add_shared

bp = Blueprint("ai_proxy_ops", __name__)


def _matches(presented: str | None, expected: str) -> bool:
    """Constant-time, in whatever header encoding the client used (as client tokens are)."""
    if presented is None:
        return False
    wanted = expected.encode("utf-8")
    # Every form is compared, so the time taken does not tell which one matched.
    return any([hmac.compare_digest(form, wanted) for form in token_bytes(presented)])


@bp.get("/metrics")
def get_metrics():
    expected = proxy_state().config.server.metrics_token
    if expected:
        require_metrics_token(expected)
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)


def require_metrics_token(expected: str) -> None:
    """401 without the metrics token; wrong ones count per address as wrong admin tokens do,
    and an address that used them up gets 429 whatever it sends, so guessing is no oracle. A
    right token never counts: a scraper that has it is never limited by its own scrapes."""
    presented = extract_token(request.headers)
    if presented is None:
        raise AuthenticationError("/metrics wants the metrics token as a Bearer token.")
    wait = blocked_for(METRICS_SCOPE)
    if wait is not None:
        raise RateLimitError(
            "Too many wrong metrics tokens from your address; try again later.",
            retry_after=int(wait) + 1,
        )
    if not _matches(presented, expected):
        count_wrong_token(METRICS_SCOPE)
        raise AuthenticationError("/metrics wants the metrics token as a Bearer token.")


@bp.get("/admin/status")
def get_status():
    require_admin()
    return json_response(status_report())


@bp.delete("/admin/cache")
def delete_cache():
    """Empty the response cache, or (`?model=NAME`) the entries asked for under one model name."""
    require_admin()
    cache = proxy_state().cache
    if cache is None:
        raise NotFoundError("The response cache is not enabled.", code="cache_disabled")
    model = request.args.get("model")
    if model is not None and not 0 < len(model) <= 256:
        raise InvalidRequestError("'model' must be a model name.", param="model")
    try:
        cache.delete(model)
    except StorageFailure:
        raise StorageUnavailableError(
            "The cache storage is unavailable; try again shortly.",
            code="cache_storage_unavailable",
            retry_after=5,
        ) from None
    return json_response({"deleted": True, "model": model, "storage": cache.store.scheme})


def require_admin() -> None:
    """404 without an admin token configured, 401 without the right one, 403 for a client's."""
    state = proxy_state()
    expected = state.config.admin_token
    if not expected:
        raise NotFoundError(f"No route for {request.method} {request.path}.")
    presented = extract_token(request.headers)
    if presented is None and request.method in ("GET", "HEAD") and signed_in():
        return  # the status page's session cookie: for reading only (forms carry CSRF tokens)
    if presented is None:
        raise AuthenticationError(f"{request.path} wants the admin token.")
    # Wrong admin tokens count against the status page's sign-in limit, per address: without
    # it every admin route would be an unlimited oracle for guessing the token.
    wait = blocked_for()
    if wait is not None:
        raise RateLimitError(
            "Too many wrong admin tokens from your address; try again later.",
            retry_after=int(wait) + 1,
        )
    if not _matches(presented, expected):
        count_wrong_token()
        if state.authenticator.enabled and _is_client_token(presented):
            raise PermissionDeniedError(
                f"A client token may not read {request.path}.", code="admin_only"
            )
        raise AuthenticationError("Invalid admin token.")


def _is_client_token(presented: str) -> bool:
    try:
        proxy_state().authenticator.authenticate({"x-api-key": presented}, None)
        return True
    except AuthenticationError:
        return False


def status_report() -> dict:
    """Each deployment's health, quota left and load; each client token's quota left."""
    state = proxy_state()
    router, quotas = state.router, state.quotas
    providers = router.providers
    keys = [p.model.key for p in providers]
    breakers = router.cooldowns.states(keys)
    in_flight = router.in_flight()
    now = time.time()
    deployments = []
    for provider, breaker in zip(providers, breakers, strict=True):
        model = provider.model
        if breaker.open_until is not None:
            health = "cooling_down"
        elif router.cooldowns.needs_probe(breaker):
            health = "probing"
        else:
            health = "healthy"
        deployments.append(
            {
                "key": model.key,
                "name": model.name,
                "provider": model.provider,
                "priority": model.priority,
                "state": health,
                "cooling_down_until": breaker.open_until,
                "cooling_down_for_seconds": (
                    round(breaker.open_until - now, 1) if breaker.open_until else None
                ),
                "consecutive_failures": breaker.failures,
                "latency_ms": router.latency_ms(model.key),
                "in_flight": in_flight.get(model.key, 0),
                "quota": quotas.report(Owner.DEPLOYMENT.key(model.key)),
            }
        )
    tokens = [
        {"name": token.name, "quota": quotas.report(Owner.TOKEN.key(token.name))}
        for token in state.config.tokens
    ]
    report = {
        "deployments": deployments,
        "tokens": tokens,
        "requests_in_flight": sum(in_flight.values()),
        "in_flight_scope": "this worker",
        "rate_limit_storage": {
            "uri_scheme": state.config.rate_limits.storage.split("://", 1)[0],
            "ok": quotas.healthy(),
            "errors": quotas.storage_errors,
        },
        "cooldown_storage_errors": router.cooldowns.errors,
        "upstream_connections": state.pool.connections(),
    }
    # Every worker's numbers for the status page (additive: each deployment's `activity`, ...).
    return add_shared(report, state)
