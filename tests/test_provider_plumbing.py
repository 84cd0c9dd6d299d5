"""The plumbing every adapter shares: URL roots in both `base_url` forms, the JSON event reader,
image answers in the form the client asked for, and the text of content parts."""

from __future__ import annotations

import base64
import gc
import io
import json
import weakref

import pytest
import requests
import responses

from app.config import ModelConfig, RetryConfig
from app.content import content_text
from app.errors import UpstreamError
from app.providers import CallContext
from app.providers.base import ChatStream, PrimedStream
from app.providers.gigachat import DEFAULT_AUTH_URL
from app.providers.http import Event, api_root, json_events
from app.providers.openai import OpenAIProvider
from app.redact import REDACTOR
from app.upstream import UpstreamPool

KEY = "sk-upstream-plumbing-secret"
CHAT = {"messages": [{"role": "user", "content": "hello"}]}
OPENAI_ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
    ],
}
ANSWERS = {
    "anthropic": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [{"type": "text", "text": "ok"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    },
    "google": {"candidates": [{"content": {"parts": [{"text": "ok"}]}, "finishReason": "STOP"}]},
    "gigachat": {"choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}]},
    "cohere": {
        "message": {"content": [{"type": "text", "text": "ok"}]},
        "finish_reason": "COMPLETE",
    },
    "cloudflare": {"result": {"response": "ok"}, "success": True},
    "azure": OPENAI_ANSWER,
    "openai": OPENAI_ANSWER,
}

# (provider, configured base_url or Go-style url, the chat endpoint it must reach). Each API
# root is given as its SDK takes it and with its version; both reach the same endpoint.
ROOTS = [
    ("anthropic", "https://api.anthropic.com/v1", "https://api.anthropic.com/v1/messages"),
    ("anthropic", "https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
    ("anthropic", "https://api.anthropic.com/", "https://api.anthropic.com/v1/messages"),
    ("anthropic", "https://gw.test/anthropic", "https://gw.test/anthropic/v1/messages"),
    ("anthropic", "https://api.anthropic.com/v1/messages", "https://api.anthropic.com/v1/messages"),
    (
        "google",
        "https://generativelanguage.googleapis.com/v1beta",
        "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent",
    ),
    (
        "google",
        "https://generativelanguage.googleapis.com",
        "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent",
    ),
    (
        "google",
        "https://generativelanguage.googleapis.com/v1",
        "https://generativelanguage.googleapis.com/v1/models/m:generateContent",
    ),
    (
        "google",
        "https://generativelanguage.googleapis.com/v1beta/openai/",
        "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent",
    ),
    ("gigachat", "https://giga.test/api/v1", "https://giga.test/api/v1/chat/completions"),
    ("gigachat", "https://giga.test", "https://giga.test/api/v1/chat/completions"),
    ("gigachat", "https://giga.test/api", "https://giga.test/api/v1/chat/completions"),
    ("cohere", "https://api.cohere.com", "https://api.cohere.com/v2/chat"),
    ("cohere", "https://api.cohere.com/v2", "https://api.cohere.com/v2/chat"),
    ("cohere", "https://api.cohere.com/v1/", "https://api.cohere.com/v2/chat"),
    (
        "cloudflare",
        "https://api.cloudflare.com/client/v4/accounts/acc/ai",
        "https://api.cloudflare.com/client/v4/accounts/acc/ai/run/m",
    ),
    (
        "cloudflare",
        "https://api.cloudflare.com/client/v4/accounts/acc",
        "https://api.cloudflare.com/client/v4/accounts/acc/ai/run/m",
    ),
    (
        "cloudflare",
        "https://api.cloudflare.com/client/v4/accounts/acc/ai/v1",
        "https://api.cloudflare.com/client/v4/accounts/acc/ai/run/m",
    ),
    (
        "azure",
        "https://res.openai.azure.com",
        "https://res.openai.azure.com/openai/deployments/m/chat/completions?api-version=2024-10-21",
    ),
    (
        "azure",
        "https://res.openai.azure.com/openai/",
        "https://res.openai.azure.com/openai/deployments/m/chat/completions?api-version=2024-10-21",
    ),
    ("openai", "https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
    ("openai", "https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions"),
]


@pytest.mark.parametrize(("provider", "base_url", "endpoint"), ROOTS)
@responses.activate(assert_all_requests_are_fired=True)
def test_both_base_url_forms_reach_the_endpoint(provider_client, provider, base_url, endpoint):
    if provider == "gigachat":
        responses.post(DEFAULT_AUTH_URL, json={"access_token": "t", "expires_at": 2**41})
    responses.post(endpoint, json=ANSWERS[provider])
    model = {"name": "m", "provider": provider, "base_url": base_url, "token": KEY, "model": "m"}
    response = provider_client([model]).post("/v1/chat/completions", json={**CHAT, "model": "m"})
    assert response.status_code == 200, response.json
    assert response.json["choices"][0]["message"]["content"] == "ok"


@pytest.mark.parametrize(
    ("provider", "url", "endpoint"),
    [
        (
            "anthropic",
            "https://api.anthropic.com/v1/messages",
            "https://api.anthropic.com/v1/messages",
        ),
        ("anthropic", "https://api.anthropic.com", "https://api.anthropic.com/v1/messages"),
        (
            "google",
            "https://generativelanguage.googleapis.com/v1beta/models",
            "https://generativelanguage.googleapis.com/v1beta/models/m:generateContent",
        ),
        (
            "gigachat",
            "https://giga.test/api/v1/chat/completions",
            "https://giga.test/api/v1/chat/completions",
        ),
        # A Go-style endpoint `url` is posted to exactly as written.
        (
            "openrouter",
            "https://or.test/api/v1/chat/completions?x=1",
            "https://or.test/api/v1/chat/completions?x=1",
        ),
    ],
)
@responses.activate(assert_all_requests_are_fired=True)
def test_go_style_urls_reach_the_endpoint(provider_client, provider, url, endpoint):
    if provider == "gigachat":
        responses.post(DEFAULT_AUTH_URL, json={"access_token": "t", "expires_at": 2**41})
    responses.post(endpoint, json=ANSWERS.get(provider, OPENAI_ANSWER))
    model = {"name": "m", "provider": provider, "url": url, "token": KEY, "model": "m"}
    response = provider_client([model]).post("/v1/chat/completions", json={**CHAT, "model": "m"})
    assert response.status_code == 200, response.json


@responses.activate(assert_all_requests_are_fired=True)
def test_unversioned_anthropic_root_serves_messages_and_token_counts(provider_client):
    responses.post("https://api.anthropic.com/v1/messages", json=ANSWERS["anthropic"])
    responses.post("https://api.anthropic.com/v1/messages/count_tokens", json={"input_tokens": 7})
    model = {"name": "c", "provider": "anthropic", "base_url": "https://api.anthropic.com"}
    client = provider_client([{**model, "token": KEY, "model": "m"}])
    body = {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert client.post("/v1/messages", json=body).status_code == 200
    counted = client.post("/v1/messages/count_tokens", json=body)
    assert counted.status_code == 200
    assert counted.json["input_tokens"] == 7


@pytest.mark.parametrize(
    ("url", "suffixes", "api_path", "root"),
    [
        ("https://h.test", (), "/v1", "https://h.test/v1"),
        ("https://h.test/v1", (), "/v1", "https://h.test/v1"),
        ("https://h.test/V1/", (), "/v1", "https://h.test/V1"),
        ("https://h.test/v1beta", (), "/v1", "https://h.test/v1beta"),
        ("https://h.test/api", (), "/api/v1", "https://h.test/api/v1"),
        ("https://h.test/x/api/v2", (), "/api/v1", "https://h.test/x/api/v2"),
        ("https://h.test/v1/messages?key=secret#top", ("/messages",), "/v1", "https://h.test/v1"),
        ("https://user:pw@h.test", (), "", "https://user:pw@h.test"),
        ("  https://h.test/openai  ", (), "/openai", "https://h.test/openai"),
    ],
)
def test_api_root(url, suffixes, api_path, root):
    assert api_root(url, suffixes, api_path) == root


# --- the JSON event reader --------------------------------------------------------------------


class Stream:
    """What json_events reads: an upstream response whose body is `data`, and its label."""

    completed = False
    label = "m (test)"

    def __init__(self, data: bytes) -> None:
        self.response = requests.Response()
        self.response.raw = io.BytesIO(data)


def events(data: bytes, **kwargs) -> tuple[list[Event], Stream]:
    stream = Stream(data)
    return list(json_events(stream, **kwargs)), stream


def test_events_end_at_done_and_mark_the_stream_completed():
    read, stream = events(b'data: {"a": 1}\n\ndata:\n\ndata: [DONE]\n\ndata: {"b": 2}\n\n')
    assert read == [Event(None, {"a": 1})]
    assert stream.completed


def test_events_without_done_leave_the_stream_incomplete():
    read, stream = events(b'event: ping\ndata: {"a": 1}\n\n', done=None)
    assert read == [Event("ping", {"a": 1})]
    assert not stream.completed


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"data: {not json\n\n", "invalid JSON"),
        (b"data: [1, 2]\n\n", "unexpected event"),
        (b'data: "text"\n\n', "unexpected event"),
        (b'data: {"error": {"message": "overloaded"}}\n\n', "the stream failed: overloaded"),
    ],
)
def test_bad_events_are_upstream_failures(data, message):
    def failure(event: Event) -> str | None:
        return event.data["error"]["message"] if "error" in event.data else None

    with pytest.raises(UpstreamError, match=message):
        events(data, failure=failure)


def test_lists_are_batches_of_events():
    read, _ = events(b'data: [{"a": 1}, {"b": 2}]\n\n', lists=True)
    assert [e.data for e in read] == [{"a": 1}, {"b": 2}]


def test_in_band_error_messages_are_scrubbed():
    # An in-band error that echoes the deployment's key must not carry it to the client.
    REDACTOR.register_transient(KEY)
    body = json.dumps({"error": f"bad key {KEY}"}).encode()
    with pytest.raises(UpstreamError) as caught:
        events(b"data: " + body + b"\n\n", failure=lambda e: e.data.get("error"))
    assert KEY not in str(caught.value)


# --- image answers ----------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
IMAGES_URL = "https://img.test/v1/images/generations"
HOSTED = "https://cdn.img.test/a.png"


def image_provider() -> OpenAIProvider:
    model = ModelConfig(name="img", provider="openai", base_url="https://img.test/v1", token=KEY)
    return OpenAIProvider(model, UpstreamPool(RetryConfig(max_retries=0), 4))


CTX = CallContext(request_id="req-images")
B64 = base64.b64encode(PNG).decode()


@pytest.mark.parametrize(
    ("upstream", "wanted", "expected", "fetches"),
    [
        ({"url": HOSTED}, "url", {"url": HOSTED}, 0),
        ({"url": HOSTED}, None, {"url": HOSTED}, 0),
        ({"url": HOSTED}, "b64_json", {"b64_json": B64}, 1),
        ({"b64_json": B64}, "b64_json", {"b64_json": B64}, 0),
        ({"b64_json": B64}, "url", {"url": f"data:image/png;base64,{B64}"}, 0),
        (
            {"b64_json": B64, "revised_prompt": "a cat"},
            "url",
            {"url": f"data:image/png;base64,{B64}", "revised_prompt": "a cat"},
            0,
        ),
        ({"url": f"data:image/png;base64,{B64}"}, "b64_json", {"b64_json": B64}, 0),
    ],
)
@responses.activate
def test_images_in_the_form_the_client_asked_for(upstream, wanted, expected, fetches):
    responses.post(IMAGES_URL, json={"created": 1, "data": [upstream]})
    responses.get(HOSTED, body=PNG, content_type="image/png")
    body = {"model": "m", "prompt": "a cat"}
    if wanted:
        body["response_format"] = wanted
    assert image_provider().images(body, CTX) == [expected]
    # A hosted image is fetched (through the deployment's pool) only when bytes are wanted.
    assert len([c for c in responses.calls if c.request.url == HOSTED]) == fetches


@pytest.mark.parametrize("upstream", [{"url": HOSTED}, {"b64_json": B64}])
@responses.activate
def test_image_file_is_the_bytes_and_their_media_type(upstream):
    responses.post(IMAGES_URL, json={"created": 1, "data": [upstream]})
    responses.get(HOSTED, body=PNG, content_type="application/octet-stream")
    assert image_provider().image_file({"model": "m", "prompt": "a cat"}, CTX) == (
        PNG,
        "image/png",
    )
    sent = json.loads(responses.calls[0].request.body)
    assert sent["n"] == 1


@pytest.mark.parametrize(
    "upstream",
    [
        {"url": "ftp://img.test/a.png"},
        {"url": "file:///etc/passwd"},
        {"b64_json": base64.b64encode(b"not an image").decode()},
    ],
)
@responses.activate
def test_image_file_refuses_what_is_not_an_http_image(upstream):
    responses.post(IMAGES_URL, json={"created": 1, "data": [upstream]})
    with pytest.raises(UpstreamError):
        image_provider().image_file({"model": "m", "prompt": "a cat"}, CTX)


# --- text of content parts --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "kwargs", "text"),
    [
        ("plain", {}, "plain"),
        (None, {}, ""),
        (42, {}, ""),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], {}, "a b"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], {"sep": ""}, "ab"),
        ([{"text": "a"}, {"type": "image_url"}, {"text": 3}, "b"], {"sep": "\n"}, "a\nb"),
        ([{"type": "text", "text": "a"}, {"type": "thinking", "text": "x"}], {"kind": "text"}, "a"),
        (["bare"], {"kind": "text"}, ""),
    ],
)
def test_content_text(content, kwargs, text):
    assert content_text(content, **kwargs) == text


# --- adapter bugs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "base_url", "endpoint", "reply", "stream"),
    [
        # `dict("abc")` in the translator: a shape it did not expect.
        (
            "cloudflare",
            "https://api.cloudflare.com/client/v4/accounts/acc/ai",
            "https://api.cloudflare.com/client/v4/accounts/acc/ai/run/m",
            {"json": {"result": {"choices": [{"message": "abc"}]}, "success": True}},
            False,
        ),
        # A list as a choice index: unhashable where the translator keys its state by it.
        (
            "gigachat",
            "https://giga.test/api/v1",
            "https://giga.test/api/v1/chat/completions",
            {
                "body": 'data: {"choices": [{"index": [1], "delta": {"function_call": '
                '{"name": "f"}}}]}\n\n',
                "content_type": "text/event-stream",
            },
            True,
        ),
    ],
)
@responses.activate
def test_a_translator_tripping_over_an_answer_is_logged_as_a_proxy_bug(
    provider_client, caplog, provider, base_url, endpoint, reply, stream
):
    responses.post(DEFAULT_AUTH_URL, json={"access_token": "t", "expires_at": 2**41})
    responses.post(endpoint, **reply)
    model = {"name": "m", "provider": provider, "base_url": base_url, "token": KEY, "model": "m"}
    body = {**CHAT, "model": "m", "stream": stream}
    response = provider_client([model]).post("/v1/chat/completions", json=body)
    if stream:
        # The first chunk was out before the translator tripped: the stream ends in-band.
        assert response.status_code == 200
        assert b'"error"' in response.get_data()
    else:
        assert response.status_code == 502
    bugs = [r for r in caplog.records if r.levelname == "ERROR" and "shape" in r.getMessage()]
    assert bugs, "the translator's exception was not logged as a proxy bug"
    # With its traceback (the log filter renders it into the record's text).
    assert "Traceback" in caplog.text


def test_a_primed_stream_lets_go_of_each_chunk_read_ahead_once_relayed():
    """The chunks read before the client saw a byte are relayed, then not kept for the life of
    the stream (a burst of long streams would otherwise hold each one's first chunks)."""

    class Chunk(dict):
        pass  # a dict that can be weakly referenced

    class Listed(ChatStream):
        def __init__(self, chunks: list) -> None:
            super().__init__(None, "listed")
            self.chunks = chunks

        def __iter__(self):
            while self.chunks:
                yield self.chunks.pop(0)

    usage, first = Chunk(usage={"prompt_tokens": 3}), Chunk(choices=[{"index": 0}])
    later = Chunk(choices=[{"index": 0, "finish_reason": "stop"}])
    primed = PrimedStream(Listed([usage, first, later]), "listed")
    refs = [weakref.ref(usage), weakref.ref(first)]
    del usage, first
    relayed = iter(primed)
    assert next(relayed)["usage"] == {"prompt_tokens": 3}
    assert next(relayed)["choices"] == [{"index": 0}]
    assert next(relayed) is later
    gc.collect()
    assert [ref() for ref in refs] == [None, None]
    assert list(relayed) == []
