"""The proxy's error model: one exception root and the JSON bodies it renders to on each surface."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
from collections.abc import Callable

from flask import Response

from .kinds import Surface
from .redact import REDACTOR

logger = logging.getLogger(__name__)

OPENAI, ANTHROPIC, GEMINI = Surface.OPENAI, Surface.ANTHROPIC, Surface.GEMINI
# Google's status names (google.rpc.Code) for the HTTP statuses the proxy answers.
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ProxyError(Exception):
    """A failure the client is told about; subclasses set status, type and code."""

    status = 500
    type = "api_error"
    code: str | None = "internal_error"
    anthropic_type = "api_error"
    default_message = "The proxy failed to handle the request."

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        super().__init__(self.message)
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.retry_after = retry_after
        self.extra_headers = dict(headers or {})

    def headers(self) -> dict[str, str]:
        """Response headers this error carries (Retry-After, WWW-Authenticate, Allow)."""
        headers = dict(self.extra_headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def openai_body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def anthropic_body(self) -> dict:
        return {"type": "error", "error": {"type": self.anthropic_type, "message": self.message}}

    def gemini_body(self) -> dict:
        """Google's error shape; the proxy's own code rides in an ErrorInfo `reason`."""
        status = GOOGLE_STATUS.get(self.status) or (
            "INTERNAL" if self.status >= 500 else "INVALID_ARGUMENT"
        )
        error: dict = {"code": self.status, "message": self.message, "status": status}
        if self.code:
            info = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.code}
            error["details"] = [{**info, "domain": "ai-proxy"}]
        return {"error": error}

    def on(self, surface: Surface) -> ProxyError:
        """The error as `surface` reports it: itself, unless that API names the condition with
        another status (see UpstreamError)."""
        return self

    def body(self, surface: Surface) -> dict:
        if surface == GEMINI:
            return self.gemini_body()
        return self.anthropic_body() if surface == ANTHROPIC else self.openai_body()


class InvalidRequestError(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = None
    anthropic_type = "invalid_request_error"
    default_message = "The request is not valid."


class InvalidJSONError(InvalidRequestError):
    code = "invalid_json"
    default_message = "The request body is not valid JSON."


class AuthenticationError(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    anthropic_type = "authentication_error"
    default_message = "A valid API key is required."

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "WWW-Authenticate": 'Bearer realm="ai-proxy"'}


class PermissionDeniedError(ProxyError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"
    anthropic_type = "permission_error"
    default_message = "This API key may not use that model."


class NotFoundError(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"
    anthropic_type = "not_found_error"
    default_message = "Not found."


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"
    default_message = "The model does not exist."


class MethodNotAllowedError(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"
    anthropic_type = "invalid_request_error"
    default_message = "The method is not allowed for this path."


class RequestTooLargeError(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"
    anthropic_type = "request_too_large"
    default_message = "The request body is too large."


class UnsupportedMediaTypeError(ProxyError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"
    anthropic_type = "invalid_request_error"
    default_message = "The request body's encoding is not supported."


class RateLimitError(ProxyError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    anthropic_type = "rate_limit_error"
    default_message = "Rate limit exceeded."


class BudgetExceededError(RateLimitError):
    code = "budget_exceeded"
    default_message = "Budget exceeded."


class UpstreamError(ProxyError):
    """An upstream failure; retryable ones move routing on to the next candidate."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    anthropic_type = "api_error"
    default_message = "The upstream provider failed."

    # The upstream's own HTTP status and Retry-After, when it answered with one (an upstream
    # 429 stays a 502 on the OpenAI and Anthropic surfaces, as the contract has it).
    upstream_status: int | None = None
    upstream_retry_after: float | None = None

    def __init__(self, message: str | None = None, *, retryable: bool = True, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retryable = retryable

    def on(self, surface: Surface) -> ProxyError:
        # Google's API says an exhausted quota with 429 RESOURCE_EXHAUSTED (its clients back off
        # on it): an upstream that rate-limited the last attempt is said so on that surface.
        if surface != GEMINI or self.upstream_status != 429 or self.status != 502:
            return self
        wait = self.upstream_retry_after or self.retry_after or 1.0
        limited = RateLimitError(self.message, code="upstream_rate_limited", retry_after=wait)
        limited.extra_headers = dict(self.extra_headers)
        return limited


class UpstreamTimeoutError(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"
    anthropic_type = "timeout_error"
    default_message = "The upstream provider timed out."


class UpstreamClientError(UpstreamError):
    """The upstream refused the request itself (400, 404, 413, 422): the client's to fix."""

    type = "invalid_request_error"
    anthropic_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        context_length: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(message, retryable=False, status=status, code=code, **kwargs)
        self.context_length = context_length
        if code is None:
            self.code = None
        if status == 404:
            self.anthropic_type = "not_found_error"
        elif status == 413:
            self.anthropic_type = "request_too_large"


class NoAvailableModelError(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "no_available_model"
    anthropic_type = "overloaded_error"
    default_message = "No deployment of this model is available right now."


class ClientGoneError(ProxyError):
    """The client hung up before its answer was complete; nobody is left to answer."""

    status = 499
    type = code = "client_closed_request"
    default_message = "The client closed the connection."


class StorageUnavailableError(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "rate_limit_storage_unavailable"
    anthropic_type = "api_error"
    default_message = "The rate-limit storage is unavailable."


def error_response(err: ProxyError, surface: Surface = OPENAI) -> Response:
    """Render an error as the JSON response of the given surface, scrubbed of secrets."""
    err = err.on(surface)
    response = Response(
        json.dumps(REDACTOR.scrub_answer(err.body(surface))),
        status=err.status,
        mimetype="application/json",
    )
    for name, value in err.headers().items():
        response.headers[name] = REDACTOR.scrub_reflected(value)
    return response


def sse_error_event(err: ProxyError, surface: Surface = OPENAI) -> bytes:
    """The in-band event that ends a stream that failed after its first byte, scrubbed."""
    if surface == Surface.RESPONSES:
        # A Responses stream ends itself with `response.failed` (app.responses_stream.failing):
        # only it knows the sequence number and the output so far.
        return b""
    data = json.dumps(REDACTOR.scrub_answer(err.body(surface)))
    if surface == ANTHROPIC:
        return f"event: error\ndata: {data}\n\n".encode()
    return f"data: {data}\n\n".encode()


MALFORMED = (TypeError, AttributeError, KeyError, ValueError, IndexError)


def _guard(make_error: Callable[[], ProxyError], log_level: int):
    """A translator boundary: input of an unexpected shape becomes a clean proxy error.

    The original exception is logged with its traceback at `log_level`: a translator that
    trips over input it should handle is a proxy bug, and must not pass for a flaky provider.
    """

    def failed(fn, err: BaseException) -> ProxyError:
        logger.log(
            log_level,
            "%s.%s met input of an unexpected shape: %s",
            fn.__module__,
            fn.__qualname__,
            type(err).__name__,
            exc_info=err,
        )
        return make_error()

    def decorate(fn):
        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generate(*args, **kwargs):
                try:
                    yield from fn(*args, **kwargs)
                except MALFORMED as err:
                    raise failed(fn, err) from err

            return generate

        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except MALFORMED as err:
                raise failed(fn, err) from err

        return call

    return decorate


def client_shape(fn):
    """For translators of client requests: a malformed request is a 400, not a crash."""
    return _guard(
        lambda: InvalidRequestError("The request has a field of an unexpected shape."),
        logging.DEBUG,
    )(fn)


def upstream_shape(fn):
    """For translators of upstream answers: a malformed answer is a retryable upstream failure,
    logged with its traceback as an error (the translator may be what is wrong)."""
    return _guard(
        lambda: UpstreamError("The upstream answer has an unexpected shape."), logging.ERROR
    )(fn)
