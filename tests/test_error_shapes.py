"""Every kind of ProxyError in each surface's own shape (OpenAI and Responses, Anthropic, Google),
and an upstream rate limit said as one on the Gemini surface: 429 RESOURCE_EXHAUSTED with
Retry-After, then 503 UNAVAILABLE while the only deployment cools down."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import app as app_package
from app import create_app
from app.errors import (
    ProxyError,
    UpstreamClientError,
    UpstreamError,
    error_response,
)
from app.kinds import Surface
from tests.conftest import LOOPBACK, TOKEN, openai_model
from tests.stub_upstream import Reply, StubUpstream

# Every error kind: (HTTP status, Google status, Anthropic type, OpenAI type).
TABLE = {
    "ProxyError": (500, "INTERNAL", "api_error", "api_error"),
    "InvalidRequestError": (
        400,
        "INVALID_ARGUMENT",
        "invalid_request_error",
        "invalid_request_error",
    ),
    "InvalidJSONError": (400, "INVALID_ARGUMENT", "invalid_request_error", "invalid_request_error"),
    "AuthenticationError": (401, "UNAUTHENTICATED", "authentication_error", "authentication_error"),
    "PermissionDeniedError": (403, "PERMISSION_DENIED", "permission_error", "permission_error"),
    "NotFoundError": (404, "NOT_FOUND", "not_found_error", "invalid_request_error"),
    "ModelNotFoundError": (404, "NOT_FOUND", "not_found_error", "invalid_request_error"),
    "MethodNotAllowedError": (
        405,
        "INVALID_ARGUMENT",
        "invalid_request_error",
        "invalid_request_error",
    ),
    "RequestTooLargeError": (413, "INVALID_ARGUMENT", "request_too_large", "invalid_request_error"),
    "UnsupportedMediaTypeError": (
        415,
        "INVALID_ARGUMENT",
        "invalid_request_error",
        "invalid_request_error",
    ),
    "RateLimitError": (429, "RESOURCE_EXHAUSTED", "rate_limit_error", "rate_limit_error"),
    "BudgetExceededError": (429, "RESOURCE_EXHAUSTED", "rate_limit_error", "rate_limit_error"),
    "UpstreamError": (502, "UNAVAILABLE", "api_error", "upstream_error"),
    "UpstreamTimeoutError": (504, "DEADLINE_EXCEEDED", "timeout_error", "timeout_error"),
    "UpstreamClientError": (
        400,
        "INVALID_ARGUMENT",
        "invalid_request_error",
        "invalid_request_error",
    ),
    "NoAvailableModelError": (503, "UNAVAILABLE", "overloaded_error", "service_unavailable"),
    "ClientGoneError": (499, "CANCELLED", "api_error", "client_closed_request"),
    "StorageUnavailableError": (503, "UNAVAILABLE", "api_error", "service_unavailable"),
    "ResponseStorageError": (503, "UNAVAILABLE", "api_error", "service_unavailable"),
}
# The statuses the upstream's own refusals may carry, each in Google's and Anthropic's words.
CLIENT_STATUSES = {
    400: ("INVALID_ARGUMENT", "invalid_request_error"),
    404: ("NOT_FOUND", "not_found_error"),
    413: ("INVALID_ARGUMENT", "request_too_large"),
    422: ("INVALID_ARGUMENT", "invalid_request_error"),
}


def error_kinds() -> dict[str, type[ProxyError]]:
    for module in pkgutil.walk_packages(app_package.__path__, "app."):
        importlib.import_module(module.name)
    found: dict[str, type[ProxyError]] = {"ProxyError": ProxyError}
    pending = [ProxyError]
    while pending:
        for kind in pending.pop().__subclasses__():
            found[kind.__name__] = kind
            pending.append(kind)
    return found


KINDS = error_kinds()


def make(kind: type[ProxyError], status: int = 400) -> ProxyError:
    if issubclass(kind, UpstreamClientError):
        return kind("refused", status=status)
    return kind("what went wrong", retry_after=3)


def test_the_table_names_every_error_kind():
    assert set(KINDS) == set(TABLE), "a new ProxyError needs its row in TABLE"


def rendered(app, err: ProxyError, surface: Surface):
    with app.app_context():
        response = error_response(err, surface)
    return response.status_code, response.get_json(), response.headers


@pytest.fixture(scope="module")
def bare_app():
    return create_app({"env": {}, "config_path": None})


@pytest.mark.parametrize("name", sorted(TABLE))
def test_each_kind_in_each_surfaces_shape(bare_app, name):
    status, google, anthropic, openai = TABLE[name]
    err = make(KINDS[name])
    code, body, headers = rendered(bare_app, err, Surface.GEMINI)
    assert (code, body["error"]["code"], body["error"]["status"]) == (status, status, google)
    assert body["error"]["message"] == err.message
    code, body, _ = rendered(bare_app, err, Surface.ANTHROPIC)
    assert (code, body["type"], body["error"]["type"]) == (status, "error", anthropic)
    for surface in (Surface.OPENAI, Surface.RESPONSES):
        code, body, _ = rendered(bare_app, err, surface)
        assert (code, body["error"]["type"]) == (status, openai)
        assert set(body["error"]) == {"message", "type", "param", "code"}
    if status in (429, 503):
        assert headers["Retry-After"] == "3"


@pytest.mark.parametrize("status", sorted(CLIENT_STATUSES))
def test_upstream_refusals_keep_their_status_everywhere(bare_app, status):
    google, anthropic = CLIENT_STATUSES[status]
    err = make(UpstreamClientError, status)
    assert rendered(bare_app, err, Surface.GEMINI)[1]["error"]["status"] == google
    assert rendered(bare_app, err, Surface.ANTHROPIC)[1]["error"]["type"] == anthropic
    assert rendered(bare_app, err, Surface.OPENAI)[0] == status


@pytest.mark.parametrize("upstream_status", [429, 500, 503, None])
def test_an_upstream_rate_limit_is_resource_exhausted_on_gemini_only(bare_app, upstream_status):
    err = UpstreamError("gem (google): upstream answered 429")
    err.upstream_status, err.upstream_retry_after = upstream_status, 7.0
    code, body, headers = rendered(bare_app, err, Surface.GEMINI)
    if upstream_status == 429:
        assert (code, body["error"]["status"], headers["Retry-After"]) == (
            429,
            "RESOURCE_EXHAUSTED",
            "7",
        )
    else:
        assert (code, body["error"]["status"]) == (502, "UNAVAILABLE")
        assert "Retry-After" not in headers
    # The OpenAI, Responses and Anthropic surfaces keep the contract's 502.
    for surface in (Surface.OPENAI, Surface.RESPONSES, Surface.ANTHROPIC):
        assert rendered(bare_app, err, surface)[0] == 502


# --- through the app: the only deployment rate-limited upstream ------------------------------


@pytest.fixture
def upstream():
    stub = StubUpstream()
    yield stub
    stub.close()


def gemini_client(upstream, provider: str):
    if provider == "google":
        model = {
            "name": "only",
            "provider": "google",
            "base_url": upstream.url + "/v1beta",
            "token": "goog-up-secret",
            "model": "gemini-up",
        }
    else:
        model = openai_model(upstream, name="only")
    app = create_app(
        {
            "env": {},
            "config_path": None,
            "default_model": None,
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [model],
            "retry": {"max_retries": 0},
            "routing": {"cooldown_seconds": 30},
        }
    )
    client = app.test_client()
    client.environ_base.update({"HTTP_X_GOOG_API_KEY": TOKEN, **LOOPBACK})
    return client


BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
LIMITED = {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}


@pytest.mark.parametrize("provider", ["google", "openai"])
@pytest.mark.parametrize(
    "method", ["generateContent", "streamGenerateContent", "streamGenerateContent?alt=sse"]
)
@pytest.mark.parametrize("retry_after,expected", [("7", "7"), (None, "1")])
def test_the_only_deployment_rate_limited_upstream(
    upstream, provider, method, retry_after, expected
):
    client = gemini_client(upstream, provider)
    headers = {"Retry-After": retry_after} if retry_after else {}
    upstream.queue(Reply(status=429, body=LIMITED, headers=headers))
    response = client.post(f"/v1beta/models/only:{method}", json=BODY)
    assert response.status_code == 429, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
    assert response.headers["Retry-After"] == expected
    assert error["details"][0]["reason"] == "upstream_rate_limited"
    # While it cools down, nothing is available: 503 UNAVAILABLE, when to come back.
    again = client.post(f"/v1beta/models/only:{method}", json=BODY)
    assert again.status_code == 503
    assert again.get_json()["error"]["status"] == "UNAVAILABLE"
    assert int(again.headers["Retry-After"]) >= 1
    assert len(upstream.requests) == 1


def test_a_failing_upstream_stays_unavailable(upstream):
    client = gemini_client(upstream, "google")
    upstream.queue(Reply(status=500, body={"error": {"message": "boom"}}))
    response = client.post("/v1beta/models/only:generateContent", json=BODY)
    assert response.status_code == 502
    assert response.get_json()["error"]["status"] == "UNAVAILABLE"
    assert "Retry-After" not in response.headers
