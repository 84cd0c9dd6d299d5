"""Go ai-proxy configs run unchanged: its example config, image models written its way, /image."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from responses import matchers

from app import create_app
from app.config import infer_kind, load_config
from app.providers import REGISTRY
from app.providers.gigachat import DEFAULT_AUTH_URL
from app.providers.openai import OpenAIProvider
from tests.conftest import LOOPBACK, TOKEN

DATA = Path(__file__).parent / "data" / "go"
EXAMPLE = DATA / "config-example.yaml"
IMAGES = DATA / "config-images.yaml"

PNG = b"\x89PNG\r\n\x1a\n" + b"\x01" * 600
JPEG = b"\xff\xd8\xff\xe0" + b"\x02" * 600
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x03" * 600

KEYS = {
    "GIGACHAT_CREDENTIALS": "giga-client-id:giga-client-secret",
    "HF_TOKEN": "hf_test_key_0123456789",
    "GROQ_API_KEY": "gsk_test_key_0123456789",
    "TOGETHER_API_KEY": "together-test-key-0123456789",
    "AIMLAPI_KEY": "aimlapi-test-key-0123456789",
    "CLOUDFLARE_API_TOKEN": "cf-test-token-0123456789",
    "PICTURES_TOKEN": "pictures-test-token",
}

HF_FLUX = "https://api-inference.huggingface.co/models/black-forest-labs/FLUX.1-dev"
TOGETHER = "https://api.together.xyz/v1/images/generations"
AIMLAPI = "https://api.aimlapi.com/v1/images/generations"
CLOUDFLARE = (
    "https://api.cloudflare.com/client/v4/accounts/0123456789abcdef/ai/run/"
    "@cf/black-forest-labs/flux-1-schnell"
)
AIRFORCE = "https://api.airforce/imagine2"
PICTURES = "https://pictures.example.test/generate"


def chat_answer(content: str = "hello from upstream") -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


def make_client(path: Path, env: dict | None = None, token: str = TOKEN, **routing):
    app = create_app(
        {
            "config_path": str(path),
            "env": {"AUTH_TOKEN": TOKEN, **KEYS, **(env or {})},
            "retry": {"max_retries": 0},
            "routing": {"cooldown_seconds": 0, **routing},
        }
    )
    client = app.test_client()
    client.environ_base.update({"HTTP_AUTHORIZATION": f"Bearer {token}", **LOOPBACK})
    return client


def sent_json(call) -> dict:
    return json.loads(call.request.body)


# --- the example config, unchanged ------------------------------------------------------------


def test_the_go_example_config_loads_unchanged():
    config = load_config(str(EXAMPLE), env={})
    assert [m.name for m in config.models] == [
        "gigachat/GigaChat",
        "huggingface/Mistral-Nemo-Instruct-2407",
        "groq/llama-3.2-90b-vision-preview",
        "deepseek/deepseek-chat:free",
        "glama/gemini-2.0-flash-thinking-exp-01-21",
    ]
    assert {m.kind for m in config.models} == {"chat"}
    assert not config.left_out and not config.warnings


# (model, the URL the Go proxy posts to, the upstream model id it sends, its key)
EXAMPLE_CHAT = [
    (
        "huggingface/Mistral-Nemo-Instruct-2407",
        "https://api-inference.huggingface.co/models/mistralai/Mistral-Nemo-Instruct-2407"
        "/v1/chat/completions",
        "Mistral-Nemo-Instruct-2407",
        "HF_TOKEN",
    ),
    (
        "groq/llama-3.2-90b-vision-preview",
        "https://api.groq.com/openai/v1/chat/completions",
        "llama-3.2-90b-vision-preview",
        "groq_token",
    ),
    (
        "deepseek/deepseek-chat:free",
        "https://openrouter.ai/api/v1/chat/completions",
        "deepseek/deepseek-chat:free",
        "poenrouter_token",
    ),
    (
        "glama/gemini-2.0-flash-thinking-exp-01-21",
        "https://glama.ai/api/gateway/openai/v1/chat/completions",
        "gemini-2.0-flash-thinking-exp-01-21",
        "glama-token",
    ),
]


@pytest.mark.parametrize(("model", "url", "upstream_model", "key"), EXAMPLE_CHAT)
@responses.activate(assert_all_requests_are_fired=True)
def test_the_go_example_config_answers_chat(model, url, upstream_model, key):
    responses.post(url, json=chat_answer())
    client = make_client(EXAMPLE)
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    for path in ("/chat/completions", "/v1/chat/completions"):
        answer = client.post(path, json=body)
        assert answer.status_code == 200, answer.json
        assert answer.json["choices"][0]["message"]["content"] == "hello from upstream"
    assert len(responses.calls) == 2
    call = responses.calls[0]
    assert call.request.url == url
    assert call.request.headers["Authorization"] == f"Bearer {key}"
    assert sent_json(call)["model"] == upstream_model


@responses.activate
def test_the_go_example_gigachat_model_answers_chat():
    responses.post(
        DEFAULT_AUTH_URL,
        json={"access_token": "giga-access", "expires_at": int((time.time() + 1800) * 1000)},
    )
    responses.post(
        "https://gigachat.devices.sberbank.ru/api/v1/chat/completions",
        json=chat_answer("privet"),
        match=[matchers.header_matcher({"Authorization": "Bearer giga-access"})],
    )
    client = make_client(EXAMPLE)
    body = {"model": "SMALL", "messages": [{"role": "user", "content": "hi"}]}
    answer = client.post("/chat/completions", json=body)
    assert answer.status_code == 200, answer.json
    assert answer.json["choices"][0]["message"]["content"] == "privet"


# --- image models written the Go way -----------------------------------------------------------


def test_go_image_models_are_image_models_without_kind():
    config = load_config(str(IMAGES), env=KEYS)
    kinds = {m.name: m.kind for m in config.models}
    assert kinds == {
        "gigachat/GigaChat": "chat",
        "huggingface/Mistral-Nemo-Instruct-2407": "chat",
        "groq/llama-3.2-90b-vision-preview": "chat",
        "huggingface/black-forest-labs/FLUX.1-dev": "image",
        "together/black-forest-labs/FLUX.1-schnell-Free": "image",
        "aimlapi/flux/schnell": "image",
        "cloudflare/black-forest-labs/flux-1-schnell": "image",
        "airforce/flux": "image",
        "pictures/sketch": "image",
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def register_image_upstream(model: str, image: bytes) -> None:
    """The answer each Go image provider gives, at the URL the Go proxy calls."""
    if model.startswith("huggingface/"):
        responses.post(HF_FLUX, body=image, content_type="image/jpeg")
    elif model.startswith("together/"):
        responses.post(TOGETHER, json={"data": [{"b64_json": b64(image)}]})
    elif model.startswith("aimlapi/"):
        responses.post(AIMLAPI, json={"data": [{"b64_json": b64(image)}]})
    elif model.startswith("cloudflare/"):
        responses.post(
            CLOUDFLARE, json={"success": True, "errors": [], "result": {"image": b64(image)}}
        )
    elif model.startswith("airforce/"):
        # The Go proxy relays the body whatever its Content-Type says.
        responses.get(AIRFORCE, body=image, content_type="application/octet-stream")
    else:
        responses.post(PICTURES, body=image, content_type="image/webp")


def check_image_request(model: str, call, prompt: str) -> None:
    """What the Go proxy sends each provider: its URL as written, its payload, its key."""
    request = call.request
    if model.startswith("airforce/"):
        assert request.method == "GET"
        parts = urlsplit(request.url)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == AIRFORCE
        assert parse_qs(parts.query) == {"prompt": [prompt], "model": ["flux"]}
        assert "Authorization" not in request.headers
        return
    body = sent_json(call)
    if model.startswith("huggingface/"):
        assert request.url == HF_FLUX
        assert body == {"inputs": prompt}
        assert request.headers["Authorization"] == f"Bearer {KEYS['HF_TOKEN']}"
    elif model.startswith("together/"):
        assert request.url == TOGETHER
        assert body["model"] == "black-forest-labs/FLUX.1-schnell-Free"
        assert body["prompt"] == prompt and body["response_format"] == "b64_json"
        assert request.headers["Authorization"] == f"Bearer {KEYS['TOGETHER_API_KEY']}"
    elif model.startswith("aimlapi/"):
        assert request.url == AIMLAPI
        assert body["model"] == "flux/schnell" and body["prompt"] == prompt
    elif model.startswith("cloudflare/"):
        assert request.url == CLOUDFLARE
        assert body == {"prompt": prompt}
        assert request.headers["Authorization"] == f"Bearer {KEYS['CLOUDFLARE_API_TOKEN']}"
    else:
        assert request.url == PICTURES
        assert body == {"prompt": prompt}


IMAGE_MODELS = [
    ("huggingface/black-forest-labs/FLUX.1-dev", JPEG, "image/jpeg"),
    ("together/black-forest-labs/FLUX.1-schnell-Free", PNG, "image/png"),
    ("aimlapi/flux/schnell", WEBP, "image/webp"),
    ("cloudflare/black-forest-labs/flux-1-schnell", JPEG, "image/jpeg"),
    ("airforce/flux", PNG, "image/png"),
    ("pictures/sketch", WEBP, "image/webp"),
]


@pytest.mark.parametrize(("model", "image", "media"), IMAGE_MODELS)
@responses.activate(assert_all_requests_are_fired=True)
def test_go_image_models_answer_image_with_raw_bytes(model, image, media):
    register_image_upstream(model, image)
    client = make_client(IMAGES)
    answer = client.post("/image", json={"model": model, "prompt": "a cat on the moon"})
    assert answer.status_code == 200, answer.data[:300]
    assert answer.data == image
    assert answer.headers["Content-Type"] == media
    assert answer.headers["x-ai-proxy-model"] == model
    assert len(responses.calls) == 1
    check_image_request(model, responses.calls[0], "a cat on the moon")


@pytest.mark.parametrize(("model", "image", "media"), IMAGE_MODELS)
@responses.activate(assert_all_requests_are_fired=True)
def test_go_image_models_answer_openai_images(model, image, media):
    register_image_upstream(model, image)
    client = make_client(IMAGES)
    answer = client.post(
        "/v1/images/generations",
        json={"model": model, "prompt": "a fox", "response_format": "b64_json"},
    )
    assert answer.status_code == 200, answer.json
    assert base64.b64decode(answer.json["data"][0]["b64_json"]) == image
    check_image_request(model, responses.calls[0], "a fox")


@responses.activate(assert_all_requests_are_fired=True)
def test_go_inputs_field_is_the_prompt():
    register_image_upstream("huggingface/", JPEG)
    client = make_client(IMAGES)
    answer = client.post(
        "/image", json={"model": "huggingface/black-forest-labs/FLUX.1-dev", "inputs": "a dog"}
    )
    assert answer.status_code == 200 and answer.data == JPEG
    assert sent_json(responses.calls[0]) == {"inputs": "a dog"}


@pytest.mark.parametrize("body", [{}, {"model": "all"}, {"model": ""}, {"model": None}])
@responses.activate
def test_image_model_all_tries_every_image_model_in_turn(body):
    # The first two (by priority) fail; the third answers.
    responses.post(HF_FLUX, status=503, json={"error": "Model is loading"})
    responses.post(TOGETHER, status=500, json={"error": {"message": "boom"}})
    responses.post(AIMLAPI, json={"data": [{"b64_json": b64(PNG)}]})
    client = make_client(IMAGES)
    answer = client.post("/image", json={**body, "prompt": "a cat"})
    assert answer.status_code == 200, answer.data[:300]
    assert answer.data == PNG and answer.headers["Content-Type"] == "image/png"
    assert answer.headers["x-ai-proxy-model"] == "aimlapi/flux/schnell"
    assert [c.request.url for c in responses.calls] == [HF_FLUX, TOGETHER, AIMLAPI]


@responses.activate
def test_image_model_all_is_not_cut_at_max_attempts():
    # As in Go, "all" tries every image model, however few attempts a named model gets.
    responses.post(HF_FLUX, status=503, json={"error": "Model is loading"})
    responses.post(TOGETHER, status=500, json={"error": {"message": "boom"}})
    responses.post(AIMLAPI, json={"data": [{"b64_json": b64(PNG)}]})
    client = make_client(IMAGES, max_attempts=1)
    answer = client.post("/image", json={"model": "all", "prompt": "a cat"})
    assert answer.status_code == 200 and answer.data == PNG
    assert [c.request.url for c in responses.calls] == [HF_FLUX, TOGETHER, AIMLAPI]


@responses.activate
def test_image_model_all_only_tries_models_the_token_may_use(tmp_path):
    config = tmp_path / "config.yaml"
    text = IMAGES.read_text()
    config.write_text(
        text
        + "auth:\n  tokens:\n    - name: painter\n      token: sk-painter\n"
        + '      models: ["aimlapi/*", "pictures/*"]\n'
    )
    responses.post(AIMLAPI, status=503, json={})
    responses.post(PICTURES, body=WEBP, content_type="image/webp")
    client = make_client(config, token="sk-painter")
    answer = client.post("/image", json={"model": "all", "prompt": "a cat"})
    assert answer.status_code == 200 and answer.data == WEBP
    assert [c.request.url for c in responses.calls] == [AIMLAPI, PICTURES]


@responses.activate
def test_image_model_all_with_no_image_model_is_a_json_404():
    client = make_client(EXAMPLE)
    answer = client.post("/image", json={"model": "all", "prompt": "a cat"})
    assert answer.status_code == 404
    assert answer.json["error"]["param"] == "model"
    assert not responses.calls


@responses.activate
def test_chat_models_of_the_images_config_still_chat():
    responses.post("https://api.groq.com/openai/v1/chat/completions", json=chat_answer())
    client = make_client(IMAGES)
    body = {"model": "BIG", "messages": [{"role": "user", "content": "hi"}]}
    answer = client.post("/chat/completions", json=body)
    assert answer.status_code == 200, answer.json
    assert answer.headers["x-ai-proxy-model"] == "groq/llama-3.2-90b-vision-preview"
    # An image model is not a chat model, nor a chat model an image model.
    flux = {**body, "model": "together/black-forest-labs/FLUX.1-schnell-Free"}
    assert client.post("/v1/chat/completions", json=flux).status_code == 400
    groq = {"model": "groq/llama-3.2-90b-vision-preview", "prompt": "a cat"}
    assert client.post("/image", json=groq).status_code == 400
    assert len(responses.calls) == 1


# --- the rule, table-driven ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "kind"),
    [
        # A url naming its endpoint says what the model is.
        ({"provider": "openai", "url": "https://api.openai.com/v1/images/generations"}, "image"),
        (
            {"provider": "together", "url": "https://api.together.xyz/v1/images/generations/"},
            "image",
        ),
        ({"provider": "deepinfra", "url": "https://x.test/v1/openai/images/generations"}, "image"),
        ({"provider": "openai", "url": "https://x.test/v1/embeddings"}, "embedding"),
        ({"provider": "openai", "url": "https://x.test/v1/chat/completions"}, "chat"),
        ({"provider": "openai", "url": "https://x.test/v1/completions"}, "chat"),
        # An explicit kind wins.
        (
            {"provider": "openai", "url": "https://x.test/v1/images/generations", "kind": "chat"},
            "chat",
        ),
        # Image-only providers of the Go proxy.
        ({"provider": "airforce", "url": "https://api.airforce/imagine2"}, "image"),
        # Hugging Face inference endpoints that are not chat endpoints.
        (
            {"provider": "huggingface", "url": "https://api-inference.huggingface.co/models/a/b"},
            "image",
        ),
        (
            {
                "provider": "huggingface",
                "url": "https://router.huggingface.co/hf-inference/models/org/sdxl-turbo",
            },
            "image",
        ),
        (
            {
                "provider": "huggingface",
                "url": "https://api-inference.huggingface.co/models/a/b/v1/chat/completions",
            },
            "chat",
        ),
        ({"provider": "huggingface", "url": "https://router.huggingface.co/v1"}, "chat"),
        # Workers AI: the model id in the run URL, the `model` or the name.
        (
            {
                "provider": "cloudflare",
                "url": "https://c.test/accounts/a/ai/run/@cf/black-forest-labs/flux-1-schnell",
            },
            "image",
        ),
        (
            {
                "provider": "cloudflare",
                "url": "https://c.test/accounts/a/ai/run/@cf/stabilityai/stable-diffusion-xl-base-1.0",
            },
            "image",
        ),
        (
            {
                "provider": "cloudflare",
                "url": "https://c.test/accounts/a/ai/run/@cf/bytedance/stable-diffusion-xl-lightning",
            },
            "image",
        ),
        (
            {
                "provider": "cloudflare",
                "url": "https://c.test/accounts/a/ai/run/@cf/lykon/dreamshaper-8-lcm",
            },
            "image",
        ),
        (
            {
                "provider": "cloudflare",
                "url": "https://c.test/accounts/a/ai/run/@cf/leonardo/phoenix-1.0",
            },
            "image",
        ),
        (
            {
                "provider": "cloudflare",
                "url": "https://c.test/accounts/a/ai/run/@cf/meta/llama-3.3-70b-instruct-fp8-fast",
            },
            "chat",
        ),
        (
            {
                "provider": "cloudflare",
                "base_url": "https://c.test/accounts/a/ai",
                "model": "@cf/black-forest-labs/flux-1-schnell",
            },
            "image",
        ),
        (
            {
                "provider": "cloudflare",
                "base_url": "https://c.test/accounts/a/ai",
                "model": "@cf/meta/llama-3.1-8b-instruct",
            },
            "chat",
        ),
        # Text-to-image model ids on OpenAI-compatible hosts.
        (
            {"provider": "together", "name": "together/black-forest-labs/FLUX.1-schnell-Free"},
            "image",
        ),
        ({"provider": "openai", "model": "dall-e-3"}, "image"),
        ({"provider": "openai", "model": "gpt-image-1"}, "image"),
        ({"provider": "openai", "model": "gpt-4o-mini"}, "chat"),
        ({"provider": "openrouter", "name": "openrouter/fluxion-7b"}, "chat"),
        # Written for the Go /image handler: a url that is no API root, request limits, no
        # max_request_length, no category.
        ({"provider": "pictures", "url": PICTURES, "requests_per_minute": 5}, "image"),
        ({"provider": "pictures", "url": PICTURES, "requests_per_day": 5}, "image"),
        ({"provider": "pictures", "url": PICTURES}, "chat"),
        (
            {
                "provider": "pictures",
                "url": PICTURES,
                "requests_per_minute": 5,
                "model_size": "BIG",
            },
            "chat",
        ),
        (
            {
                "provider": "pictures",
                "url": PICTURES,
                "requests_per_minute": 5,
                "max_request_length": 4096,
            },
            "chat",
        ),
        ({"provider": "openai", "url": "https://x.test/v1", "requests_per_minute": 5}, "chat"),
        ({"provider": "openai", "url": "https://x.test/v1"}, "chat"),
        ({"provider": "openai", "url": "https://x.test"}, "chat"),
        ({"provider": "groq", "url": "https://api.groq.com/openai"}, "chat"),
        # Providers with their own adapter keep their url forms.
        ({"provider": "google", "url": "https://g.test/v1beta/models"}, "chat"),
        ({"provider": "gigachat", "url": "https://gigachat.devices.sberbank.ru/api/v1"}, "chat"),
        ({"provider": "anthropic", "url": "https://a.test/v1/messages"}, "chat"),
        ({"provider": "echo"}, "chat"),
    ],
)
def test_infer_kind(entry, kind):
    assert infer_kind({"name": "m", **entry}) == kind
    # The same through the loader (explicit kinds included).
    model = {"name": "m", "token": "k", **entry}
    if model["provider"] not in REGISTRY and "url" not in model and "base_url" not in model:
        model["base_url"] = "https://x.test/v1"
    config = load_config(env={}, overrides={"models": [model], "default_model": None})
    assert config.models[0].kind == kind


def test_native_provider_list_matches_the_registry():
    from app.config import NATIVE_PROVIDERS

    native = {name for name, (cls, _url) in REGISTRY.items() if not issubclass(cls, OpenAIProvider)}
    assert native == set(NATIVE_PROVIDERS)


# --- a full endpoint url is posted to as written -------------------------------------------------


@pytest.mark.parametrize(
    ("url", "surface", "expected"),
    [
        # The endpoint the url names: exactly as written, trailing slash and query included.
        ("https://u.test/v1/images/generations", "image", "https://u.test/v1/images/generations"),
        ("https://u.test/v1/images/generations/", "image", "https://u.test/v1/images/generations/"),
        (
            "https://u.test/openai/images/generations?api-version=2",
            "image",
            "https://u.test/openai/images/generations?api-version=2",
        ),
        ("https://u.test/v1/chat/completions", "chat", "https://u.test/v1/chat/completions"),
        ("https://u.test/v1/chat/completions/", "chat", "https://u.test/v1/chat/completions/"),
        ("https://u.test/x/chat/completions?k=1", "chat", "https://u.test/x/chat/completions?k=1"),
        ("https://u.test/v1/embeddings", "embedding", "https://u.test/v1/embeddings"),
        # Other endpoints of the same host: its root plus their path.
        ("https://u.test/v1/chat/completions", "embedding", "https://u.test/v1/embeddings"),
        ("https://u.test/v1/images/generations", "chat", "https://u.test/v1/chat/completions"),
        # An API root: the endpoint path is appended.
        ("https://u.test/v1", "chat", "https://u.test/v1/chat/completions"),
        ("https://u.test/v1/", "image", "https://u.test/v1/images/generations"),
    ],
)
@responses.activate(assert_all_requests_are_fired=True)
def test_a_full_endpoint_url_is_posted_to_as_written(url, surface, expected):
    kind = {"chat": "chat", "image": "image", "embedding": "embedding"}[surface]
    client_app = create_app(
        {
            "config_path": None,
            "env": {"AUTH_TOKEN": TOKEN},
            "default_model": None,
            "models": [{"name": "m", "provider": "acme", "url": url, "token": "k", "kind": kind}],
            "retry": {"max_retries": 0},
        }
    )
    client = client_app.test_client()
    client.environ_base.update({"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"})
    if surface == "chat":
        responses.post(expected, json=chat_answer())
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        answer = client.post("/v1/chat/completions", json=body)
    elif surface == "image":
        responses.post(expected, json={"data": [{"b64_json": b64(PNG)}]})
        answer = client.post("/image", json={"model": "m", "prompt": "a cat"})
    else:
        responses.post(
            expected,
            json={
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [1]}],
            },
        )
        answer = client.post("/v1/embeddings", json={"model": "m", "input": "x"})
    assert answer.status_code == 200, answer.data[:300]
    assert [c.request.url for c in responses.calls] == [expected]
