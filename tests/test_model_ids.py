"""Wildcard model ids never leave the deployment's path: refused with 400, never sent upstream."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
import requests
import responses
from hypothesis import given, settings
from hypothesis import strategies as st

from app import create_app
from app.config import ModelConfig, RetryConfig
from app.errors import InvalidRequestError
from app.model_ids import IdForm, check_model_id, normalised, path_part
from app.providers.azure import AzureProvider
from app.providers.cloudflare import CloudflareProvider
from app.providers.google import GoogleProvider
from app.upstream import UpstreamPool
from tests.conftest import TOKEN
from tests.stub_upstream import StubUpstream

ACCOUNT = "https://api.cloudflare.com/client/v4/accounts/acc123/ai"
GOOGLE = "https://generativelanguage.googleapis.com/v1beta"
AZURE = "https://res.openai.azure.com"
OPENROUTER = "https://openrouter.ai/api/v1"
KEY = "upstream-secret-key"

# Ids a client could send after a wildcard prefix to reach another path with the proxy's key.
HOSTILE = [
    "..",
    ".",
    "../x",
    "x/..",
    "x/../../../accounts",
    "@cf/meta/x/../../../accounts",
    "@cf/meta/./x",
    "./x",
    "%2e%2e",
    "%2E%2E/x",
    ".%2e",
    "%252e%252e",
    "x%2Fy",
    "x%2f..%2f..",
    "x%00",
    "x?key=1",
    "x?",
    "x#frag",
    "#",
    "x\\..\\..\\y",
    "\\",
    "x//y",
    "/x",
    "//evil.example/x",
    "x/",
    "",
    "x\ty",
    "x\ny",
    "x\r\nHost: evil",
    "x y",
    " x",
    "x\x00",
    "x\x7f",
    "\uff0e\uff0e",  # full-width dots: NFKC makes them ".."
    "x/\uff0e\uff0e/y",
    "x\uff0fy",  # full-width slash
    "x\u2024\u2024",  # one-dot leaders
    "x\u200by",  # zero-width space
    "x\u2028y",  # line separator
    "\ufe52\ufe52",  # small full stop
    "x\uff1fy",  # full-width question mark
    "x\uff03y",  # full-width number sign
    "x\uff05" + "2e",  # full-width percent
    "x" * 300,
]

# Wildcard deployments of every provider that puts the id into its URL, and an OpenAI-type one
# (the id goes into the body there), one per kind and surface.
MODELS = [
    {"name": "cloudflare/*", "provider": "cloudflare", "base_url": ACCOUNT, "token": KEY},
    {
        "name": "cf-emb/*",
        "provider": "cloudflare",
        "base_url": ACCOUNT,
        "token": KEY,
        "kind": "embedding",
    },
    {
        "name": "cf-img/*",
        "provider": "cloudflare",
        "base_url": ACCOUNT,
        "token": KEY,
        "kind": "image",
    },
    {"name": "google/*", "provider": "google", "base_url": GOOGLE, "token": KEY},
    {
        "name": "google-emb/*",
        "provider": "google",
        "base_url": GOOGLE,
        "token": KEY,
        "kind": "embedding",
    },
    {"name": "azure/*", "provider": "azure", "base_url": AZURE, "token": KEY},
    {"name": "openrouter/*", "provider": "openrouter", "base_url": OPENROUTER, "token": KEY},
    {
        "name": "or-emb/*",
        "provider": "openrouter",
        "base_url": OPENROUTER,
        "token": KEY,
        "kind": "embedding",
    },
    {
        "name": "or-img/*",
        "provider": "openrouter",
        "base_url": OPENROUTER,
        "token": KEY,
        "kind": "image",
    },
]

USER = [{"role": "user", "content": "hi"}]
# (path, body for a model id, prefixes of the deployments that serve that surface)
SURFACES = [
    (
        "/v1/chat/completions",
        lambda m: {"model": m, "messages": USER},
        ("cloudflare/", "google/", "azure/", "openrouter/"),
    ),
    (
        "/v1/messages",
        lambda m: {"model": m, "max_tokens": 5, "messages": USER},
        ("cloudflare/", "google/", "azure/", "openrouter/"),
    ),
    (
        "/v1/messages/count_tokens",
        lambda m: {"model": m, "messages": USER},
        ("cloudflare/", "google/", "azure/", "openrouter/"),
    ),
    ("/v1/completions", lambda m: {"model": m, "prompt": "hi"}, ("openrouter/",)),
    (
        "/v1/embeddings",
        lambda m: {"model": m, "input": "hi"},
        ("cf-emb/", "google-emb/", "or-emb/"),
    ),
    ("/v1/images/generations", lambda m: {"model": m, "prompt": "a cat"}, ("cf-img/", "or-img/")),
    ("/image", lambda m: {"model": m, "prompt": "a cat"}, ("cf-img/", "or-img/")),
]
CASES = [
    pytest.param(path, make_body, prefix, id=f"{path}-{prefix}")
    for path, make_body, prefixes in SURFACES
    for prefix in prefixes
]


@pytest.fixture(scope="module")
def wildcard_app():
    """One app for the module's ~900 requests (making one per test took most of their time):
    nothing these requests do stays behind in it (no quotas, no cooldown, no cache)."""
    return create_app(
        {
            "env": {},
            "config_path": None,
            "default_model": None,
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": MODELS,
            "retry": {"max_retries": 0},
            "routing": {"cooldown_seconds": 0},
        }
    )


@pytest.fixture
def client(wildcard_app):
    client = wildcard_app.test_client()
    client.environ_base.update({"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"})
    return client


@pytest.fixture
def upstream_server():
    stub = StubUpstream()
    yield stub
    stub.close()


@pytest.fixture
def upstream():
    """Every upstream URL answers (so a request that escaped would succeed), and is recorded."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        for method in (responses.GET, responses.POST, responses.PUT, responses.DELETE):
            mock.add(method, re.compile(r".*"), json={"error": {"message": "stub"}}, status=500)
        yield mock


@pytest.mark.parametrize(("path", "make_body", "prefix"), CASES)
@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_wildcard_ids_are_refused_and_never_sent(
    client, upstream, path, make_body, prefix, hostile
):
    response = client.post(path, json=make_body(prefix + hostile))
    assert len(upstream.calls) == 0, [call.request.url for call in upstream.calls]
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["type"] == "invalid_request_error"
    if path != "/v1/messages" and not path.startswith("/v1/messages/"):
        assert error["param"] == "model"
    assert KEY not in response.get_data(as_text=True)


# A valid id through each wildcard reaches exactly the deployment's own path.
@pytest.mark.parametrize(
    ("model", "path", "url"),
    [
        (
            "cloudflare/@cf/meta/llama-3.1-8b-instruct",
            "/v1/chat/completions",
            f"{ACCOUNT}/run/@cf/meta/llama-3.1-8b-instruct",
        ),
        (
            "cloudflare/@hf/thebloke/mistral-7b-instruct-v0.1-awq",
            "/v1/messages",
            f"{ACCOUNT}/run/@hf/thebloke/mistral-7b-instruct-v0.1-awq",
        ),
        (
            "cf-emb/@cf/baai/bge-base-en-v1.5",
            "/v1/embeddings",
            f"{ACCOUNT}/run/@cf/baai/bge-base-en-v1.5",
        ),
        (
            "cf-img/@cf/black-forest-labs/flux-1-schnell",
            "/image",
            f"{ACCOUNT}/run/@cf/black-forest-labs/flux-1-schnell",
        ),
        (
            "google/gemini-2.0-flash",
            "/v1/chat/completions",
            f"{GOOGLE}/models/gemini-2.0-flash:generateContent",
        ),
        (
            "google/models/gemini-1.5-pro",
            "/v1/messages",
            f"{GOOGLE}/models/gemini-1.5-pro:generateContent",
        ),
        (
            "google/tunedModels/my-model-1",
            "/v1/chat/completions",
            f"{GOOGLE}/tunedModels/my-model-1:generateContent",
        ),
        (
            "google-emb/text-embedding-004",
            "/v1/embeddings",
            f"{GOOGLE}/models/text-embedding-004:batchEmbedContents",
        ),
        (
            "azure/gpt-4o.prod_1",
            "/v1/chat/completions",
            f"{AZURE}/openai/deployments/gpt-4o.prod_1/chat/completions?api-version=2024-10-21",
        ),
        (
            "openrouter/deepseek/deepseek-chat:free",
            "/v1/chat/completions",
            f"{OPENROUTER}/chat/completions",
        ),
    ],
)
def test_valid_wildcard_ids_reach_the_deployment_path(client, upstream, model, path, url):
    body = {"model": model, "messages": USER, "max_tokens": 5, "input": "hi", "prompt": "a cat"}
    client.post(path, json=body)
    assert [call.request.url for call in upstream.calls] == [url]


def test_allow_list_under_a_wildcard_cannot_be_left(make_app, upstream):
    """A token allowed `cloudflare/@cf/meta/*` reaches only ids under it."""
    app = make_app(
        {
            "auth": {
                "tokens": [{"name": "meta", "token": TOKEN, "models": ["cloudflare/@cf/meta/*"]}]
            },
            "models": MODELS,
            "retry": {"max_retries": 0},
        }
    )
    client = app.test_client()
    client.environ_base.update({"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"})
    for model in (
        "cloudflare/@cf/meta/../../x",
        "cloudflare/@cf/meta/../openai/gpt",
        "cloudflare/@cf/meta/%2e%2e/%2e%2e/accounts",
        "cloudflare/@cf/meta/\uff0e\uff0e/other",
        "cloudflare/@cf/meta\\..\\other",
    ):
        response = client.post("/v1/chat/completions", json={"model": model, "messages": USER})
        assert response.status_code in (400, 403), model
    assert len(upstream.calls) == 0
    refused = client.post(
        "/v1/chat/completions", json={"model": "cloudflare/@cf/other/x", "messages": USER}
    )
    assert refused.status_code == 403
    client.post(
        "/v1/chat/completions", json={"model": "cloudflare/@cf/meta/llama", "messages": USER}
    )
    assert [call.request.url for call in upstream.calls] == [f"{ACCOUNT}/run/@cf/meta/llama"]


# --- the checks themselves -------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE)
@pytest.mark.parametrize("form", list(IdForm))
def test_check_refuses_every_hostile_id_in_every_form(hostile, form):
    with pytest.raises(InvalidRequestError) as caught:
        check_model_id(hostile, form)
    assert caught.value.param == "model"
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("model_id", "form"),
    [
        ("@cf/meta/llama-3.1-8b-instruct", IdForm.SEGMENTS),
        ("gemini-2.0-flash-001", IdForm.SEGMENT),
        ("gpt-4o.prod_1", IdForm.SEGMENT),
        ("deepseek/deepseek-chat:free", IdForm.BODY),
        ("meta-llama/Llama-3.1-8B-Instruct:novita", IdForm.BODY),
        ("通义千问", IdForm.BODY),
    ],
)
def test_check_passes_real_model_ids(model_id, form):
    assert check_model_id(model_id, form) == model_id


def test_path_segment_forms():
    assert path_part("@cf/meta/llama-3.1", IdForm.SEGMENTS) == "@cf/meta/llama-3.1"
    assert path_part("a:b", IdForm.SEGMENT) == "a%3Ab"
    with pytest.raises(InvalidRequestError):
        path_part("a/b", IdForm.SEGMENT)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a/../b", "b"),
        ("a/%2e%2e/b", "b"),
        ("a/%252e%252e/b", "b"),
        ("a\\..\\b", "b"),
        ("a//./b", "a/b"),
        ("a/\uff0e\uff0e/b", "b"),
        ("cloudflare/@cf/meta/../../x", "cloudflare/x"),
    ],
)
def test_normalised(raw, expected):
    assert normalised(raw) == expected


def _providers():
    pool = UpstreamPool(RetryConfig(max_retries=0), 2)
    return [
        (
            CloudflareProvider(
                ModelConfig(name="cf/*", provider="cloudflare", base_url=ACCOUNT), pool
            ),
            "/client/v4/accounts/acc123/ai/run/",
        ),
        (
            GoogleProvider(ModelConfig(name="g/*", provider="google", base_url=GOOGLE), pool),
            "/v1beta/",
        ),
        (
            AzureProvider(ModelConfig(name="az/*", provider="azure", base_url=AZURE), pool),
            "/openai/deployments/",
        ),
    ]


PROVIDERS = _providers()


def _url_of(provider, model_id: str) -> str:
    if isinstance(provider, GoogleProvider):
        url, params = provider.endpoint(model_id, "generateContent"), None
    elif isinstance(provider, AzureProvider):
        url, params = provider.endpoint(model_id)
    else:
        url, params = provider.endpoint(model_id), None
    # The URL exactly as requests would put it on the wire (it resolves dot segments).
    return requests.Request("POST", url, params=params).prepare().url


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(
            list("a@-_.:/\\%?#2eEfF ~") + ["\uff0e", "\uff0f", "\t", "\u00e9"]
        ),
        max_size=24,
    )
)
def test_no_id_builds_a_url_outside_the_deployment_path(model_id):
    """Property: every id either is refused, or its URL stays under the deployment's path and
    carries no dot segment, no escape of a dot or slash, no query beyond the proxy's own."""
    for provider, prefix in PROVIDERS:
        try:
            provider.check_upstream_id(model_id)
        except InvalidRequestError:
            with pytest.raises(InvalidRequestError):
                _url_of(provider, model_id)
            continue
        parts = urlsplit(_url_of(provider, model_id))
        assert parts.path.startswith(prefix), (model_id, parts.path)
        segments = parts.path[len(prefix) :].split("/")
        assert all(s not in ("", ".", "..") for s in segments), (model_id, parts.path)
        assert not re.search(r"%(2e|2f|5c)", parts.path, re.IGNORECASE), parts.path
        assert parts.query in ("", "api-version=2024-10-21") and not parts.fragment


# --- through a real gunicorn and a real upstream ---------------------------------------------


def test_hostile_ids_through_gunicorn_reach_no_upstream_path(proxy_factory, upstream_server):
    stub = upstream_server
    prefixes = {
        "cloudflare/": "/client/v4/accounts/acc/ai/run/",
        "google/": "/v1beta/models/",
        "azure/": "/openai/deployments/",
        "openrouter/": "/api/v1/chat/completions",
    }
    proxy = proxy_factory(
        {
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [
                {"name": "cloudflare/*", "provider": "cloudflare", "token": KEY,
                 "base_url": f"{stub.url}/client/v4/accounts/acc/ai"},
                {"name": "google/*", "provider": "google", "token": KEY,
                 "base_url": f"{stub.url}/v1beta"},
                {"name": "azure/*", "provider": "azure", "token": KEY, "base_url": stub.url},
                {"name": "openrouter/*", "provider": "openrouter", "token": KEY,
                 "base_url": f"{stub.url}/api/v1"},
            ],
            "retry": {"max_retries": 0},
        }
    )  # fmt: skip
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    for prefix in prefixes:
        for hostile in HOSTILE:
            for path, make_body in (
                ("/v1/chat/completions", lambda m: {"model": m, "messages": USER}),
                ("/v1/messages", lambda m: {"model": m, "max_tokens": 5, "messages": USER}),
            ):
                response = session.post(proxy.url + path, json=make_body(prefix + hostile))
                assert response.status_code == 400, (prefix, hostile, response.text)
    assert stub.requests == []
    for model in ("cloudflare/@cf/meta/llama-3", "google/m-1", "azure/m-1", "openrouter/m-1"):
        session.post(proxy.url + "/v1/chat/completions", json={"model": model, "messages": USER})
    for recorded in stub.requests:
        assert any(recorded.path.startswith(p) for p in prefixes.values()), recorded.path
    assert [r.path.split("?")[0] for r in stub.requests] == [
        "/client/v4/accounts/acc/ai/run/@cf/meta/llama-3",
        "/v1beta/models/m-1:generateContent",
        "/openai/deployments/m-1/chat/completions",
        "/api/v1/chat/completions",
    ]
