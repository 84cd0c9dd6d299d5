"""Liveness, readiness and version endpoints; none of them needs a token."""

from __future__ import annotations

from flask import Blueprint, Response

from ..blueprints.common import json_response, proxy_state
from ..version import __version__

bp = Blueprint("ai_proxy_health", __name__)


@bp.get("/ping")
def ping():
    """Go ai-proxy compatibility: a plain-text OK."""
    return Response("OK", mimetype="text/plain")


@bp.get("/healthz")
def get_health():
    return json_response({"status": "ok"})


@bp.get("/readyz")
def get_readiness():
    checks = readiness_checks()
    storage = checks["rate_limit_storage"]
    # With `allow`, a storage outage degrades quotas but the proxy still serves.
    storage_ok = storage["ok"] or storage["on_storage_error"] == "allow"
    ready = checks["config"]["ok"] and checks["models"]["ok"] and storage_ok
    return json_response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status=200 if ready else 503,
    )


def readiness_checks() -> dict:
    """Each check's state; no file-system path: this endpoint answers without a token."""
    state = proxy_state()
    loaded = len(state.config.models)
    return {
        "config": {"ok": True},
        "models": {"ok": loaded > 0, "loaded": loaded, "left_out": len(state.config.left_out)},
        "rate_limit_storage": {
            "ok": state.quotas.healthy(),
            "on_storage_error": state.config.rate_limits.on_storage_error,
            "errors": state.quotas.storage_errors,
        },
    }


@bp.get("/version")
def get_version():
    return json_response({"name": "ai-proxy", "version": __version__})
