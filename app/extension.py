"""The AIProxy Flask extension: mounts the proxy's blueprints, hooks and JSON errors on an app."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping

from flask import Flask, g, request
from werkzeug.exceptions import HTTPException

from app.blueprints import health, openai
from app.config import Config, load_config
from app.errors import (
    ANTHROPIC,
    OPENAI,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ProxyError,
    RequestTooLargeError,
    error_response,
)
from app.state import EXTENSION_KEY, ProxyState, build_state

logger = logging.getLogger(__name__)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9\-_.:]{1,128}$")
API_SURFACES = (health.bp, openai.bp)


class AIProxy:
    """`AIProxy(app)` or `AIProxy().init_app(app, url_prefix="/ai")` serves the proxy from `app`."""

    def __init__(
        self,
        app: Flask | None = None,
        *,
        url_prefix: str = "",
        config: Config | None = None,
        config_path: str | None = None,
        overrides: Mapping | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.url_prefix = url_prefix
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.env = env
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, url_prefix: str | None = None) -> None:
        prefix = (self.url_prefix if url_prefix is None else url_prefix).rstrip("/")
        config = self.config or load_config(self.config_path, self.env, self.overrides)
        state = build_state(config, prefix)
        app.extensions[EXTENSION_KEY] = state
        for blueprint in API_SURFACES:
            app.register_blueprint(blueprint, url_prefix=prefix or None)
        app.before_request(_begin_request)
        app.after_request(_finish_response)
        app.register_error_handler(ProxyError, _handle_proxy_error)
        app.register_error_handler(HTTPException, _handle_http_exception)
        app.register_error_handler(Exception, _handle_unexpected)


def _state() -> ProxyState:
    from flask import current_app

    return current_app.extensions[EXTENSION_KEY]


def _ours() -> bool:
    """Whether this request is for the proxy (all of the app, or what lies under its prefix)."""
    prefix = _state().url_prefix
    return not prefix or request.path == prefix or request.path.startswith(prefix + "/")


def _surface() -> str:
    path = request.path[len(_state().url_prefix) :]
    return ANTHROPIC if path.startswith("/v1/messages") else OPENAI


def _begin_request() -> None:
    if not _ours():
        return
    incoming = request.headers.get("X-Request-ID", "")
    g.ai_proxy_request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
    request.max_content_length = _state().config.server.max_body_bytes


def _finish_response(response):
    if not _ours():
        return response
    response.headers["x-request-id"] = g.get("ai_proxy_request_id") or uuid.uuid4().hex
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _handle_proxy_error(err: ProxyError):
    return error_response(err, _surface())


def _handle_http_exception(err: HTTPException):
    if err.code is None or err.code < 400 or not _ours():
        return err
    if err.code == 404:
        mapped: ProxyError = NotFoundError(f"No route for {request.method} {request.path}.")
    elif err.code == 405:
        allowed = ", ".join(getattr(err, "valid_methods", None) or [])
        mapped = MethodNotAllowedError(
            f"{request.method} is not allowed here; use {allowed}.", headers={"Allow": allowed}
        )
    elif err.code == 413:
        limit = _state().config.server.max_body_bytes
        mapped = RequestTooLargeError(f"The request body is larger than {limit} bytes.")
    elif err.code == 400:
        mapped = InvalidRequestError("The request could not be read.")
    else:
        mapped = ProxyError(err.description, status=err.code, code=_snake(err.name))
        mapped.type = "invalid_request_error" if err.code < 500 else "api_error"
    return error_response(mapped, _surface())


def _handle_unexpected(err: Exception):
    if not _ours():
        raise err
    logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(ProxyError(), _surface())


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
