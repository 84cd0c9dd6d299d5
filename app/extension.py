"""The AIProxy Flask extension: mounts the proxy's blueprints, hooks and JSON errors on an app."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Mapping

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from . import metrics, tracing, watchdog
from .accesslog import log_access
from .auth import check_local_request
from .blueprints import anthropic, docs, gemini, go, health, openai, ops, responses
from .blueprints.listing import wants_gemini
from .config import Config, load_config
from .config.schema import HEADER_NAME_RE
from .errors import (
    ANTHROPIC,
    GEMINI,
    OPENAI,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    ProxyError,
    RequestTooLargeError,
    error_response,
)
from .fastheaders import stamp_headers
from .redact import CLIENT_WORDS, ClientWords
from .state import CURRENT_REQUEST, EXTENSION_KEY, ProxyState, RequestState, build_state
from .statuspage import views as status_page

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("ai_proxy.access")

QUIET_PATHS = ("/ping", "/healthz", "/readyz", "/metrics")
CORS_ALLOW_HEADERS = (
    "Authorization, Content-Type, X-API-Key, API-Key, X-Goog-API-Key, X-Request-ID, "
    "X-Goog-API-Client, anthropic-version, anthropic-beta, OpenAI-Organization, OpenAI-Project"
)
CORS_EXPOSE = (
    "x-request-id, x-ai-proxy-model, x-ai-proxy-attempts, x-ai-proxy-cache, Age, "
    "x-ratelimit-limit-requests, "
    "x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, "
    "x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens, Retry-After"
)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9\-_.:]{1,128}$")
# What a preflight may ask for (header names of up to this many characters, this many of them);
# one asking for more or longer is answered with the usual.
MAX_CORS_HEADER_NAME_CHARS = 64
MAX_CORS_REQUEST_HEADERS = 64
MAX_CORS_REQUEST_HEADERS_CHARS = 4096
API_SURFACES = (
    health.bp,
    ops.bp,
    openai.bp,
    anthropic.bp,
    gemini.bp,
    go.bp,
    docs.bp,
    responses.bp,
    status_page.bp,
)


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
        tracing.setup_tracing(os.environ if self.env is None else self.env)
        state = build_state(config, prefix)
        app.extensions[EXTENSION_KEY] = state
        for blueprint in API_SURFACES:
            app.register_blueprint(blueprint, url_prefix=prefix or None)
        _no_slash_redirects(app)
        app.before_request(_begin_request)
        app.after_request(_finish_response)
        app.teardown_request(_end_request)
        app.register_error_handler(ProxyError, _handle_proxy_error)
        app.register_error_handler(HTTPException, _handle_http_exception)
        app.register_error_handler(Exception, _handle_unexpected)


def _state() -> ProxyState:
    current = CURRENT_REQUEST.get()
    if current is not None and current.proxy is not None:
        return current.proxy
    return current_app.extensions[EXTENSION_KEY]


def _ours() -> bool:
    """Whether this request is for the proxy (all of the app, or what lies under its prefix)."""
    prefix = _state().url_prefix
    return not prefix or request.path == prefix or request.path.startswith(prefix + "/")


def _surface() -> str:
    current = CURRENT_REQUEST.get()
    req = current.request if current is not None and current.request is not None else request
    path = req.path[len(_state().url_prefix) :]
    if gemini.is_gemini_path(path, req.method):
        return GEMINI
    if path.startswith("/v1/models") and wants_gemini(req.headers):
        return GEMINI  # the google-genai SDK's model list and lookups
    return ANTHROPIC if path.startswith("/v1/messages") else OPENAI


def _begin_request():
    # The request object behind werkzeug's proxy, looked up once instead of at every use.
    req = request._get_current_object()
    state: ProxyState = current_app.extensions[EXTENSION_KEY]
    path = req.path
    prefix = state.url_prefix
    if prefix and path != prefix and not path.startswith(prefix + "/"):
        return None  # not the proxy's (see _ours)
    headers = req.headers
    method = req.method
    # What this client sends (its body joins once read): see app.redact.ClientWords.
    CLIENT_WORDS.set(ClientWords(path))
    incoming = headers.get("X-Request-ID", "")
    request_id = incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex
    counted = not path.endswith(QUIET_PATHS)  # probes and scrapes are not load
    current = RequestState(
        request_id=request_id,
        started=time.perf_counter(),
        record={"request_id": request_id, "method": method, "path": path},
        counted=counted,
        proxy=state,
        request=req,
    )
    g.ai_proxy = current
    CURRENT_REQUEST.set(current)
    if counted:
        metrics.IN_FLIGHT.inc()
    if counted and tracing.enabled():
        current.span = tracing.start_request_span(
            f"{method} {path}",
            headers,
            {
                "http.request.method": method,
                "url.path": path,
                "ai_proxy.request_id": request_id,
            },
        )
    server = state.config.server
    req.max_content_length = server.max_body_bytes
    if not state.authenticator.enabled:
        # No client token: the proxy answers this machine's own clients only (CONTRACT 1).
        check_local_request(
            headers,
            method,
            req.scheme,
            server.cors_origins,
            form=status_page.takes_form(req.path[len(state.url_prefix) :]),
        )
    if method == "OPTIONS":
        origin = headers.get("Origin")
        if (
            origin
            and headers.get("Access-Control-Request-Method")
            and origin in server.cors_origins
        ):
            return Response(status=204)
    return None


def _no_slash_redirects(app: Flask) -> None:
    """A path with doubled slashes (`/v1//chat/completions`) is no route of the proxy's: a JSON
    404 naming it. werkzeug would answer an HTML 308 to the merged path instead, with a
    `Location` built from the request's own `Host` header (another site's, if a client sent it).
    Only the proxy's rules change: a Flask app it is mounted in keeps its own."""
    ours = {blueprint.name for blueprint in API_SURFACES}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.partition(".")[0] in ours:
            rule.merge_slashes = False


def _end_request(_err) -> None:
    """The thread's upstream watch scope and current request end with its request (threads
    serve many)."""
    watchdog.enter_scope(None)
    CURRENT_REQUEST.set(None)
    # Its body may be megabytes: not kept by an idle thread until its next request.
    CLIENT_WORDS.set(None)


def _finish_response(response: Response) -> Response:
    current = CURRENT_REQUEST.get()
    if current is None and not _ours():
        return response
    stamp_headers(response.headers, current.request_id if current else uuid.uuid4().hex)
    _cors(response)
    # The method from this request's record when there is one (no werkzeug proxy lookup).
    method = current.record["method"] if current is not None else request.method
    if method == "OPTIONS" and response.status_code in (200, 204) and _empty(response):
        # Flask's own answer to OPTIONS (the Allow header): no content, so no HTML type either.
        response.status_code = 204
        response.headers.pop("Content-Type", None)
    if current is not None:
        record = current.record
        record["status"] = response.status_code
        surface, started, counted, span = _surface(), current.started, current.counted, current.span
        # Logged and counted once the last byte is out (streams included).
        tracing.detach(span)
        label = _model_label(record)
        response.call_on_close(
            lambda: _request_done(record, started, surface, counted, span, label)
        )
    return response


def _empty(response: Response) -> bool:
    return not response.is_streamed and not response.get_data()


def _cors(response: Response) -> None:
    allowed = _state().config.server.cors_origins
    if not allowed:
        return
    origin = request.headers.get("Origin")
    if not origin or origin not in allowed:
        return
    headers = response.headers
    headers["Access-Control-Allow-Origin"] = origin
    headers.add("Vary", "Origin")
    headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
    if request.method == "OPTIONS":
        headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        headers["Access-Control-Allow-Headers"] = allowed_request_headers(
            request.headers.get("Access-Control-Request-Headers")
        )
        headers.add("Vary", "Access-Control-Request-Headers")
        headers["Access-Control-Max-Age"] = "600"


def allowed_request_headers(requested: str | None) -> str:
    """The headers a preflight from an allowed origin may send: the ones it asks for (the
    official SDKs send their own, `x-stainless-*`, `anthropic-dangerous-direct-browser-access`,
    `x-goog-api-client`, and a fixed list would break them), as long as each is a header name;
    the usual ones when it asks for none."""
    if not requested or len(requested) > MAX_CORS_REQUEST_HEADERS_CHARS:
        return CORS_ALLOW_HEADERS
    names = [name.strip() for name in requested.split(",")]
    names = [
        name
        for name in names
        if len(name) <= MAX_CORS_HEADER_NAME_CHARS and HEADER_NAME_RE.fullmatch(name)
    ][:MAX_CORS_REQUEST_HEADERS]
    return ", ".join(names) if names else CORS_ALLOW_HEADERS


def _model_label(record: dict) -> str:
    """The `model` label of the request metrics: the deployment that served, else the model the
    client asked for if it is a configured name, alias or category (refusals count too), else "".

    A name the proxy does not know is not a label: clients could otherwise make series at will.
    """
    if record.get("model"):
        return record["model"]
    requested = record.get("model_requested")
    if not isinstance(requested, str) or not requested:
        return ""
    router = _state().router
    if requested in router.by_name or requested in router.config.aliases:
        return requested
    if requested.upper() in router.categories:
        return requested.upper()
    return ""


def _request_done(
    record: dict, started: float, surface: str, counted: bool, span, model: str
) -> None:
    """One log line, the request metrics and the request span, once the answer is delivered."""
    if counted:
        metrics.IN_FLIGHT.dec()
    if span is not None:
        tracing.end_request_span(
            span,
            record["status"],
            {
                "gen_ai.request.model": record.get("model_requested"),
                "ai_proxy.model": record.get("model"),
                "ai_proxy.attempts": record.get("attempts"),
                "gen_ai.usage.input_tokens": record.get("prompt_tokens"),
                "gen_ai.usage.output_tokens": record.get("completion_tokens"),
            },
        )
    seconds = time.perf_counter() - started
    record["latency_ms"] = round(seconds * 1000, 2)
    if counted:
        # Every request is counted, refused ones too (400, 401, 403, 404, 413, 429).
        metrics.REQUESTS.labels(
            surface, model, record.get("provider", ""), str(record["status"])
        ).inc()
    if record.get("model"):
        metrics.REQUEST_SECONDS.labels(surface, model).observe(seconds)
    quiet = record["path"].endswith(QUIET_PATHS) and record["status"] < 400
    level = logging.DEBUG if quiet else logging.INFO
    if not access_logger.isEnabledFor(level):
        return
    log_access(
        access_logger,
        level,
        "%s %s %s %.1fms",
        (record["method"], record["path"], record["status"], record["latency_ms"]),
        {key: value for key, value in record.items() if value is not None},
    )


def _handle_proxy_error(err: ProxyError):
    return error_response(err, _surface())


def _handle_http_exception(err: HTTPException):
    if err.code is None or err.code < 400 or not _ours():
        return err
    if err.code == 404:
        mapped: ProxyError = NotFoundError(f"No route for {request.method} {request.path}.")
    elif err.code == 405:
        path = request.path[len(_state().url_prefix) :]
        allowed = gemini.allowed_methods(path) or ", ".join(
            getattr(err, "valid_methods", None) or []
        )
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
