"""Embeddings, images and legacy completions through real gunicorn, with the openai SDK."""

from __future__ import annotations

import base64

import openai
import pytest
import requests

from tests.conftest import TOKEN
from tests.stub_upstream import Reply

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 64


@pytest.fixture
def proxy(proxy_factory, upstream):
    def model(name: str, kind: str, **extra) -> dict:
        return {
            "name": name,
            "provider": "openai",
            "kind": kind,
            "base_url": upstream.url + "/v1",
            "token": "sk-upstream-secret",
            **extra,
        }

    return proxy_factory(
        {
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [
                model("embed", "embedding", model="text-embedding-3-small"),
                {
                    "name": "gemini-embed",
                    "provider": "google",
                    "kind": "embedding",
                    "base_url": upstream.url + "/v1beta",
                    "token": "g-secret",
                    "model": "text-embedding-004",
                },
                model("painter", "image", model="dall-e-3"),
                model("gpt", "chat", model="gpt-3.5-turbo-instruct"),
            ],
            "retry": {"max_retries": 0},
        }
    )


@pytest.fixture
def client(proxy):
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=TOKEN, max_retries=0)


def test_embeddings_with_the_sdk(client, upstream):
    upstream.queue(
        Reply(
            body={
                "object": "list",
                "model": "text-embedding-3-small",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 1.0]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )
    )
    result = client.embeddings.create(model="embed", input="hello", encoding_format="float")
    assert result.data[0].embedding == [0.25, -0.5, 1.0]
    assert result.usage.prompt_tokens == 2
    sent = upstream.requests[0]
    assert sent.json()["model"] == "text-embedding-3-small"
    assert sent.headers["Authorization"] == "Bearer sk-upstream-secret"

    # Gemini behind the same API; the SDK asks for base64 by default and decodes it itself.
    upstream.queue(Reply(body={"embeddings": [{"values": [0.5, 2.0]}, {"values": [1.5, -1.0]}]}))
    result = client.embeddings.create(model="gemini-embed", input=["a", "b"])
    assert [d.embedding for d in result.data] == [[0.5, 2.0], [1.5, -1.0]]
    assert upstream.requests[1].path.endswith(":batchEmbedContents")


def test_images_with_the_sdk(client, upstream):
    b64 = base64.b64encode(PNG).decode()
    upstream.queue(Reply(body={"created": 1, "data": [{"b64_json": b64}]}))
    image = client.images.generate(model="painter", prompt="a cat", response_format="b64_json")
    assert base64.b64decode(image.data[0].b64_json) == PNG
    upstream.queue(Reply(body={"created": 1, "data": [{"b64_json": b64}]}))
    image = client.images.generate(model="painter", prompt="a cat", response_format="url")
    assert image.data[0].url.startswith("data:image/png;base64,")


def test_raw_image_endpoint(proxy, upstream):
    upstream.queue(Reply(body={"data": [{"b64_json": base64.b64encode(PNG).decode()}]}))
    session = requests.Session()
    session.trust_env = False
    response = session.post(
        proxy.url + "/image",
        json={"prompt": "a cat"},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/png" and response.content == PNG


def test_legacy_completion_with_the_sdk(client, upstream):
    upstream.queue(
        Reply(
            body={
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": "instruct",
                "choices": [
                    {"text": " there", "index": 0, "finish_reason": "stop", "logprobs": None}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
    )
    completion = client.completions.create(model="gpt", prompt="hello")
    assert completion.choices[0].text == " there"
    assert upstream.requests[0].path == "/v1/completions"


def test_errors_with_the_sdk(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="painter", input="x")
    assert "not a embedding model" in str(info.value).replace("an embedding", "a embedding")
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="nope", prompt="x")
