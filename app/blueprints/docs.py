"""The proxy's own API description: `GET /openapi.json`, no token needed."""

from __future__ import annotations

from flask import Blueprint, request

from ..blueprints.common import json_response, proxy_state
from ..openapi import build_openapi

bp = Blueprint("ai_proxy_docs", __name__)


@bp.get("/openapi.json")
def get_openapi():
    # A path without a host, so the document holds wherever the proxy is mounted: under an
    # extension prefix, a DispatcherMiddleware mount, or a proxy that rewrites the host.
    server_url = (request.script_root + proxy_state().url_prefix) or "/"
    return json_response(build_openapi(server_url))
