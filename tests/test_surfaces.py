"""Embeddings, images, legacy completions and the Go /image endpoint."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import TOKEN, openai_model
from tests.stub_upstream import Reply

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 20


@pytest.fixture
def client(make_app, upstream):
    app = make_app(
        {
            "auth": {
                "tokens": [
                    {"name": "t", "token": TOKEN, "models": ["*"]},
                    {"name": "chat-only", "token": "chat-only", "models": ["gpt"]},
                ]
            },
            "models": [
                openai_model(upstream, name="gpt"),
                openai_model(upstream, name="embed", kind="embedding", model="text-embedding-3"),
                openai_model(upstream, name="dalle", kind="image", model="dall-e-3", priority=1),
                {
                    "name": "flux",
                    "provider": "huggingface",
                    "kind": "image",
                    "priority": 2,
                    "url": upstream.url + "/hf-inference/models/black-forest-labs/FLUX.1-schnell",
                    "token": "hf-secret",
                },
            ],
            "retry": {"max_retries": 0},
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


def test_embeddings_pass_through(client, upstream):
    answer = {
        "object": "list",
        "model": "text-embedding-3",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    upstream.queue(Reply(body=answer))
    body = {
        "model": "embed",
        "input": ["hello", "world"],
        "dimensions": 2,
        "encoding_format": "float",
    }
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200 and response.json == answer
    sent = upstream.requests[0]
    assert sent.path == "/v1/embeddings"
    assert sent.json() == {**body, "model": "text-embedding-3"}
    assert sent.headers["Authorization"] == "Bearer sk-upstream-secret"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "embed"}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": [1, "a"]}, "input"),
        ({"model": "embed", "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ],
)
def test_embeddings_validation(client, body, param):
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 400 and response.json["error"]["param"] == param


def test_a_chat_model_is_not_an_embedding_model(client):
    response = client.post("/v1/embeddings", json={"model": "gpt", "input": "x"})
    assert response.status_code == 400
    assert "not a embedding model" in response.json["error"]["message"].replace("an ", "a ")


def test_images_url_and_b64(client, upstream):
    b64 = base64.b64encode(PNG).decode()
    upstream.queue(
        Reply(body={"created": 1, "data": [{"b64_json": b64, "revised_prompt": "a red cat"}]})
    )
    response = client.post(
        "/v1/images/generations", json={"prompt": "a cat", "response_format": "b64_json"}
    )
    assert response.status_code == 200
    assert response.json["data"] == [{"b64_json": b64, "revised_prompt": "a red cat"}]
    assert upstream.requests[0].path == "/v1/images/generations"
    assert upstream.requests[0].json()["model"] == "dall-e-3"

    # The upstream gives bytes; the client wants a URL: a data URL it can read.
    upstream.queue(Reply(body={"data": [{"b64_json": b64}]}))
    data = client.post("/v1/images/generations", json={"model": "dalle", "prompt": "a cat"}).json
    assert data["data"][0]["url"] == f"data:image/png;base64,{b64}"


def test_images_given_as_url_are_fetched_for_b64(client, upstream):
    def handler(record):
        if record.path == "/files/cat.png":
            return Reply(raw=PNG, headers={"Content-Type": "image/png"})
        return Reply(body={"data": [{"url": upstream.url + "/files/cat.png"}]})

    upstream.handler = handler
    response = client.post(
        "/v1/images/generations", json={"prompt": "a cat", "response_format": "b64_json"}
    )
    assert base64.b64decode(response.json["data"][0]["b64_json"]) == PNG


def test_hugging_face_inference_raw_bytes(client, upstream):
    upstream.queue(Reply(raw=JPEG, headers={"Content-Type": "image/jpeg"}))
    response = client.post(
        "/v1/images/generations",
        json={"model": "flux", "prompt": "a dog", "size": "512x256", "response_format": "b64_json"},
    )
    assert base64.b64decode(response.json["data"][0]["b64_json"]) == JPEG
    sent = upstream.requests[0]
    assert sent.path == "/hf-inference/models/black-forest-labs/FLUX.1-schnell"
    assert sent.json() == {"inputs": "a dog", "parameters": {"width": 512, "height": 256}}
    assert sent.headers["Authorization"] == "Bearer hf-secret"


@pytest.mark.parametrize(
    ("image", "media"), [(PNG, "image/png"), (JPEG, "image/jpeg"), (WEBP, "image/webp")]
)
def test_go_image_endpoint_returns_raw_bytes(client, upstream, image, media):
    upstream.queue(Reply(body={"data": [{"b64_json": base64.b64encode(image).decode()}]}))
    response = client.post("/image", json={"prompt": "a cat"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == media
    assert response.data == image
    assert response.headers["x-ai-proxy-model"] == "dalle"


def test_go_image_falls_back_and_accepts_inputs(client, upstream):
    upstream.queue(
        Reply(status=503, body={}), Reply(raw=WEBP, headers={"Content-Type": "image/webp"})
    )
    response = client.post("/image", json={"inputs": "a cat"})
    assert response.status_code == 200 and response.data == WEBP
    assert response.headers["x-ai-proxy-model"] == "flux"


def test_go_image_errors_are_json(client, upstream):
    assert client.post("/image", json={}).json["error"]["param"] == "prompt"
    upstream.queue(Reply(raw=b"<html>not an image</html>", headers={"Content-Type": "text/html"}))
    upstream.queue(Reply(raw=b"also not", headers={"Content-Type": "text/plain"}))
    response = client.post("/image", json={"prompt": "x"})
    assert response.status_code == 502 and response.is_json
    restricted = client.post(
        "/image", json={"prompt": "x"}, headers={"Authorization": "Bearer chat-only"}
    )
    assert restricted.status_code == 404
    assert restricted.json["error"]["code"] == "model_not_found"


def test_legacy_completions_whole_and_streamed(client, upstream):
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "up-model",
        "choices": [{"text": " world", "index": 0, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    upstream.queue(Reply(body=answer))
    response = client.post("/v1/completions", json={"model": "gpt", "prompt": "hello"})
    assert response.json == answer
    assert upstream.requests[0].path == "/v1/completions"

    base = {"id": "cmpl-2", "object": "text_completion", "created": 1, "model": "up-model"}
    events = [
        "data: " + json.dumps({**base, "choices": [{"text": " wor", "index": 0}]}),
        "data: "
        + json.dumps({**base, "choices": [{"text": "ld", "index": 0, "finish_reason": "stop"}]}),
        "data: " + json.dumps({**base, "choices": [], "usage": answer["usage"]}),
        "data: [DONE]",
    ]
    upstream.queue(Reply(events=events))
    streamed = client.post(
        "/v1/completions", json={"model": "gpt", "prompt": "hello", "stream": True}
    )
    blocks = streamed.get_data(as_text=True).strip().split("\n\n")
    assert blocks[-1] == "data: [DONE]"
    texts = [json.loads(b[6:])["choices"][0]["text"] for b in blocks[:-1]]
    assert texts == [" wor", "ld"]
    assert upstream.requests[1].json()["stream_options"] == {"include_usage": True}


def test_echo_serves_no_embeddings(make_app):
    client = make_app(
        {"models": [{"name": "echo", "provider": "echo", "kind": "embedding"}]}
    ).test_client()
    response = client.post(
        "/v1/embeddings",
        json={"model": "echo", "input": "x"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert response.status_code == 400


@pytest.fixture
def native(make_app, upstream):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [
                {
                    "name": "gemini-embed",
                    "provider": "google",
                    "kind": "embedding",
                    "base_url": upstream.url + "/v1beta",
                    "token": "g-secret",
                    "model": "text-embedding-004",
                },
                {
                    "name": "cf-embed",
                    "provider": "cloudflare",
                    "kind": "embedding",
                    "base_url": upstream.url + "/accounts/acc/ai",
                    "token": "cf-secret",
                    "model": "@cf/baai/bge-small-en-v1.5",
                },
                {
                    "name": "cf-flux",
                    "provider": "cloudflare",
                    "kind": "image",
                    "base_url": upstream.url + "/accounts/acc/ai",
                    "token": "cf-secret",
                    "model": "@cf/black-forest-labs/flux-1-schnell",
                },
            ],
            "retry": {"max_retries": 0},
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


def test_gemini_batch_embeddings(native, upstream):
    upstream.queue(Reply(body={"embeddings": [{"values": [0.5, -1.0]}, {"values": [2.0, 0.25]}]}))
    body = {"model": "gemini-embed", "input": ["one", "two"], "dimensions": 2}
    answer = native.post("/v1/embeddings", json=body).json
    assert [d["embedding"] for d in answer["data"]] == [[0.5, -1.0], [2.0, 0.25]]
    assert answer["usage"]["prompt_tokens"] > 0
    sent = upstream.requests[0]
    assert sent.path == "/v1beta/models/text-embedding-004:batchEmbedContents"
    assert sent.headers["x-goog-api-key"] == "g-secret" and "key=" not in sent.path
    assert sent.json()["requests"][1] == {
        "model": "models/text-embedding-004",
        "content": {"parts": [{"text": "two"}]},
        "outputDimensionality": 2,
    }
    upstream.queue(Reply(body={"embeddings": [{"values": [0.5, -1.0]}]}))
    encoded = native.post(
        "/v1/embeddings",
        json={"model": "gemini-embed", "input": "one", "encoding_format": "base64"},
    ).json
    raw = base64.b64decode(encoded["data"][0]["embedding"])
    import struct

    assert struct.unpack("<2f", raw) == (0.5, -1.0)


def test_cloudflare_embeddings_and_flux(native, upstream):
    upstream.queue(
        Reply(
            body={"success": True, "errors": [], "result": {"shape": [1, 2], "data": [[0.1, 0.2]]}}
        )
    )
    answer = native.post("/v1/embeddings", json={"model": "cf-embed", "input": "hi"}).json
    assert answer["data"][0]["embedding"] == [0.1, 0.2]
    assert upstream.requests[0].path == "/accounts/acc/ai/run/@cf/baai/bge-small-en-v1.5"
    assert upstream.requests[0].json() == {"text": ["hi"]}

    b64 = base64.b64encode(JPEG).decode()
    upstream.queue(Reply(body={"success": True, "errors": [], "result": {"image": b64}}))
    response = native.post("/image", json={"model": "cf-flux", "prompt": "a fox"})
    assert response.data == JPEG and response.headers["Content-Type"] == "image/jpeg"
    sent = upstream.requests[1]
    assert sent.path == "/accounts/acc/ai/run/@cf/black-forest-labs/flux-1-schnell"
    assert sent.json() == {"prompt": "a fox"}
    assert sent.headers["Authorization"] == "Bearer cf-secret"
