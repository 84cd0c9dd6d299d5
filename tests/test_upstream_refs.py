"""References to objects stored upstream (files, conversations, stored prompts, cached contents,
vector stores, containers) are refused on every surface with a 400 naming the field, before any
upstream call, whether the deployment passes the request through or translates it; public URLs
still go through."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app import create_app
from app.upstream_refs import is_upstream_uri
from tests.conftest import LOOPBACK, TOKEN, openai_model
from tests.stub_upstream import StubUpstream

FILES_URL = "https://generativelanguage.googleapis.com/v1beta/files/abc123"
FILE_URIS = [
    "files/abc123",
    " files/abc123",
    FILES_URL,
    "HTTPS://GenerativeLanguage.GoogleAPIs.com./v1beta/files/abc123",
    "https://user@generativelanguage.googleapis.com:443/v1beta/files/abc123",
    "https://generativelanguage.googleapis.com/upload/v1beta/files?x=1",
    "cachedContents/xyz",
]
PUBLIC_URIS = [
    "https://example.com/cat.png",
    "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
    "gs://bucket/doc.pdf",
    "data:image/png;base64,iVBORw0KGgo=",
]


@pytest.fixture(scope="module")
def upstream() -> Iterator[StubUpstream]:
    stub = StubUpstream()
    yield stub
    stub.close()


@pytest.fixture(autouse=True)
def clean_stub(upstream) -> Iterator[None]:
    yield
    upstream.requests.clear()


@pytest.fixture(scope="module")
def client(upstream):
    app = create_app(
        {
            "env": {},
            "config_path": None,
            "default_model": None,
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [
                openai_model(upstream, name="gpt"),
                openai_model(upstream, name="native", responses=True),
                {
                    "name": "gem",
                    "provider": "google",
                    "base_url": upstream.url + "/v1beta",
                    "token": "goog-up-secret",
                    "model": "gemini-up",
                },
                {
                    "name": "claude",
                    "provider": "anthropic",
                    "base_url": upstream.url + "/v1",
                    "token": "ant-up-secret",
                    "model": "claude-up",
                },
            ],
            "retry": {"max_retries": 0},
            "routing": {"cooldown_seconds": 0},
        }
    )
    client = app.test_client()
    client.environ_base.update({"HTTP_AUTHORIZATION": f"Bearer {TOKEN}", **LOOPBACK})
    return client


@pytest.mark.parametrize("uri", FILE_URIS)
def test_files_api_uris_are_upstream_references(uri):
    assert is_upstream_uri(uri)


@pytest.mark.parametrize("uri", PUBLIC_URIS)
def test_public_uris_are_not(uri):
    assert not is_upstream_uri(uri)


def user(*parts: dict) -> dict:
    return {"type": "message", "role": "user", "content": [*parts]}


TEXT = {"type": "input_text", "text": "what is this?"}
CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
RESPONSES_BAD = [
    ({"conversation": "conv_123"}, "conversation"),
    ({"conversation": {"id": "conv_123"}}, "conversation"),
    ({"prompt": {"id": "pmpt_123", "version": "2"}}, "prompt"),
    ({"input": [user(TEXT), {"type": "item_reference", "id": "msg_1"}]}, "input[1].type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    (
        {"input": [user(TEXT, {"type": "input_file", "file_id": "file-1"})]},
        "input[0].content[1].file_id",
    ),
    (
        {"input": [user({"type": "input_image", "file_id": "file-1"})]},
        "input[0].content[0].file_id",
    ),
    (
        {"input": [user({"type": "input_image", "image_url": FILES_URL})]},
        "input[0].content[0].image_url",
    ),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        "input[0].content[0].file_id",
    ),
    (
        {
            "input": [
                user(TEXT),
                CALL,
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_file", "file_id": "file-1"}],
                },
            ]
        },
        "input[2].output[0].file_id",
    ),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[0].type"),
    ({"tools": [{"type": "code_interpreter", "container": "cntr_1"}]}, "tools[0].container"),
    (
        {"tools": [{"type": "code_interpreter", "container": {"type": "auto", "file_ids": ["f"]}}]},
        "tools[0].container.file_ids",
    ),
    (
        {"tools": [{"type": "image_generation", "input_image_mask": {"file_id": "file-1"}}]},
        "tools[0].input_image_mask.file_id",
    ),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["native", "gpt"])
@pytest.mark.parametrize("extra,param", RESPONSES_BAD)
def test_responses_refuses_upstream_objects(client, upstream, model, stream, extra, param):
    body = {"model": model, "input": "hi", "stream": stream, **extra}
    response = client.post("/v1/responses", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["param"] == param
    assert error["message"].endswith("is not supported through the proxy")
    assert f"{param}:" in error["message"]
    assert upstream.requests == []


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "data:image/png;base64,AAAA"])
def test_responses_passes_public_images(client, upstream, url):
    body = {"model": "native", "input": [user(TEXT, {"type": "input_image", "image_url": url})]}
    client.post("/v1/responses", json=body)
    assert [r.json()["input"][0]["content"][1]["image_url"] for r in upstream.requests] == [url]


CHAT_BAD = [
    ([{"type": "file", "file": {"file_id": "file-abc"}}], "messages[0].content[0].file.file_id"),
    (
        [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": FILES_URL}}],
        "messages[0].content[1].image_url.url",
    ),
    (
        [{"type": "image_url", "image_url": {"url": "files/abc"}}],
        "messages[0].content[0].image_url.url",
    ),
]


@pytest.mark.parametrize("model", ["gpt", "gem", "claude"])
@pytest.mark.parametrize("content,param", CHAT_BAD)
def test_chat_refuses_upstream_objects(client, upstream, model, content, param):
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["param"] == param
    assert upstream.requests == []


def test_chat_refuses_stored_audio_by_id(client, upstream):
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "audio": {"id": "audio_abc"}},
        {"role": "user", "content": "again"},
    ]
    response = client.post("/v1/chat/completions", json={"model": "gpt", "messages": messages})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["error"]["param"] == "messages[1].audio.id"
    assert upstream.requests == []


def test_chat_passes_public_images(client, upstream):
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    body = {"model": "gpt", "messages": [{"role": "user", "content": [part]}]}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert len(upstream.requests) == 1


FILE_SOURCE = {"type": "file", "file_id": "file_011"}
MESSAGES_BAD = [
    (
        {"messages": [{"role": "user", "content": [{"type": "image", "source": FILE_SOURCE}]}]},
        "messages[0].content[0].source.file_id",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "x"},
                        {"type": "document", "source": FILE_SOURCE},
                    ],
                }
            ]
        },
        "messages[0].content[1].source.file_id",
    ),
    (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "url", "url": FILES_URL}}],
                }
            ]
        },
        "messages[0].content[0].source.url",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "container_upload", "file_id": "file_1"}]}
            ]
        },
        "messages[0].content[0].file_id",
    ),
    ({"container": "container_011"}, "container"),
    ({"container": {"id": "container_011"}}, "container.id"),
    (
        {"container": {"skills": [{"type": "custom", "skill_id": "skill_01"}]}},
        "container.skills[0].skill_id",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [{"type": "image", "source": FILE_SOURCE}],
                        }
                    ],
                },
            ]
        },
        "messages[2].content[0].content[0].source.file_id",
    ),
]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
@pytest.mark.parametrize("model", ["claude", "gpt"])
@pytest.mark.parametrize("extra,param", MESSAGES_BAD)
def test_messages_refuses_upstream_objects(client, upstream, path, model, extra, param):
    body = {
        "model": model,
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }
    response = client.post(path, json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert f"{param}: " in error["error"]["message"]
    assert upstream.requests == []


def text_part(text: str = "what is this?") -> dict:
    return {"text": text}


def file_part(uri: str, key: str = "fileData") -> dict:
    return {key: {"mimeType": "image/png", "fileUri": uri}}


GEMINI_BAD = [
    ({"cachedContent": "cachedContents/abc"}, "cachedContent"),
    ({"cached_content": "cachedContents/abc"}, "cachedContent"),
    *(
        (
            {"contents": [{"role": "user", "parts": [text_part(), file_part(uri)]}]},
            "contents[0].parts[1].fileData.fileUri",
        )
        for uri in FILE_URIS
    ),
    (
        {"contents": [{"role": "user", "parts": [file_part("files/x", "file_data")]}]},
        "contents[0].parts[0].fileData.fileUri",
    ),
    (
        {"systemInstruction": {"parts": [file_part("files/x")]}},
        "systemInstruction.parts[0].fileData.fileUri",
    ),
    (
        {"tools": [{"fileSearch": {"fileSearchStoreNames": ["fileSearchStores/s"]}}]},
        "tools[0].fileSearch",
    ),
]


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent", "countTokens"])
@pytest.mark.parametrize("model", ["gem", "gpt"])
@pytest.mark.parametrize("extra,param", GEMINI_BAD)
def test_gemini_refuses_upstream_objects(client, upstream, method, model, extra, param):
    body = {"contents": [{"role": "user", "parts": [text_part()]}], **extra}
    response = client.post(f"/v1beta/models/{model}:{method}", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    assert f"{param}: " in error["message"]
    assert upstream.requests == []


def test_gemini_count_tokens_checks_the_wrapped_request(client, upstream):
    body = {
        "generateContentRequest": {
            "model": "models/gem",
            "contents": [{"role": "user", "parts": [text_part()]}],
            "cachedContent": "cachedContents/abc",
        }
    }
    response = client.post("/v1beta/models/gem:countTokens", json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "generateContentRequest.cachedContent: " in response.get_json()["error"]["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    "uri,mime",
    [
        ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", "video/mp4"),
        ("gs://bucket/doc.pdf", "application/pdf"),
        ("https://example.com/cat.png", "image/png"),
    ],
)
def test_gemini_passes_public_file_uris(client, upstream, uri, mime):
    part = {"fileData": {"mimeType": mime, "fileUri": uri}}
    body = {"contents": [{"role": "user", "parts": [text_part(), part]}]}
    client.post("/v1beta/models/gem:generateContent", json=body)
    sent = [r.json()["contents"][0]["parts"][1]["fileData"]["fileUri"] for r in upstream.requests]
    assert sent == [uri]
