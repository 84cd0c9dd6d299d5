"""Any OpenAI-compatible endpoint: the canonical form is its wire format, so this mostly relays."""

from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit

from app.config import GO_IMAGE_PROVIDERS, is_api_root, url_endpoint
from app.errors import UpstreamError
from app.images import MAX_IMAGE_BYTES, entries_from_json, entry_from_bytes, sniff_type
from app.providers.base import CallContext, ChatStream, Provider
from app.providers.wire import OpenAIStream
from app.upstream import body_error, read_bytes, read_json

CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"
EMBEDDINGS_PATH = "/embeddings"
IMAGES_PATH = "/images/generations"


class OpenAIProvider(Provider):
    name = "openai"

    @property
    def base_url(self) -> str:
        """The API root: `base_url`, or the Go-style `url` without its endpoint path."""
        if self.model.base_url:
            return self.model.base_url.rstrip("/")
        if self.model.url:
            return url_endpoint(self.model.url)[1]
        return (self.default_base_url or "").rstrip("/")

    def endpoint(self, path: str) -> str:
        """Where `path` (`/chat/completions`, ...) is: a Go-style `url` naming that endpoint is
        posted to exactly as written; any other endpoint is the root plus its path."""
        if self.model.url and not self.model.base_url:
            suffix, root = url_endpoint(self.model.url)
            if suffix == path:
                return self.model.url
            base, query = root.split("?", 1) if "?" in root else (root, "")
            return base + path + (f"?{query}" if query else "")
        return self.base_url + path

    def headers(self, ctx: CallContext, stream: bool = False) -> dict[str, str]:
        headers = self.json_headers(ctx, stream)
        if self.model.token:
            headers["Authorization"] = f"Bearer {self.model.token}"
        return headers

    def chat(self, body: dict, ctx: CallContext) -> dict:
        response = self.pool.send(
            "POST",
            self.endpoint(CHAT_PATH),
            label=self.label,
            headers=self.headers(ctx),
            body=json.dumps(body).encode(),
            timeout=self.timeout(ctx),
        )
        answer = read_json(response, self.label)
        if isinstance(answer, dict) and answer.get("error") and not answer.get("choices"):
            raise body_error(answer, self.label)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if (
            not choices
            or not isinstance(choices, list)
            or not all(isinstance(c, dict) and isinstance(c.get("message"), dict) for c in choices)
        ):
            raise UpstreamError(f"{self.label}: the upstream answer is not a chat completion")
        if not isinstance(answer.get("usage"), dict | None):
            del answer["usage"]
        return answer

    def open_chat_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        # Ask for usage whatever the client asked, so quotas and metrics see real numbers.
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        options["include_usage"] = True
        body = {**body, "stream": True, "stream_options": options}
        response = self.pool.send(
            "POST",
            self.endpoint(CHAT_PATH),
            label=self.label,
            headers=self.headers(ctx, stream=True),
            body=json.dumps(body).encode(),
            timeout=self.timeout(ctx),
        )
        return OpenAIStream(response, self.label)

    def _post(self, path: str, body: dict, ctx: CallContext, stream: bool = False):
        return self.pool.send(
            "POST",
            self.endpoint(path),
            label=self.label,
            headers=self.headers(ctx, stream=stream),
            body=json.dumps(body).encode(),
            timeout=self.timeout(ctx),
        )

    def embed(self, body: dict, ctx: CallContext) -> dict:
        answer = read_json(self._post(EMBEDDINGS_PATH, body, ctx), self.label)
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise UpstreamError(f"{self.label}: the upstream answer is not an embedding list")
        return answer

    def generate_image(self, body: dict, ctx: CallContext) -> list[dict]:
        url = self.model.url if not self.model.base_url else None
        if self.model.provider in GO_IMAGE_PROVIDERS and url:
            return [self._go_get_image(url, body, ctx)]
        if not url or url_endpoint(url)[0] == IMAGES_PATH or is_api_root(url):
            return entries_from_json(
                read_json(self._post(IMAGES_PATH, body, ctx), self.label), self.label
            )
        # A Go-style image endpoint, posted to as written with the Go proxy's payload: Hugging
        # Face inference takes {"inputs"}, the others {"prompt"}; the answer is the image
        # bytes or a JSON wrapper around them.
        if self.model.provider == "huggingface" or "huggingface" in urlsplit(url).netloc:
            payload: dict = {"inputs": body["prompt"]}
            width, _, height = str(body.get("size") or "").partition("x")
            if width.isdigit() and height.isdigit():
                payload["parameters"] = {"width": int(width), "height": int(height)}
        else:
            payload = {"prompt": body["prompt"]}
        response = self.pool.send(
            "POST",
            url,
            label=self.label,
            headers={**self.headers(ctx), "Accept": "image/png, image/jpeg, */*"},
            body=json.dumps(payload).encode(),
            timeout=self.timeout(ctx),
        )
        return image_answer(read_bytes(response, self.label, MAX_IMAGE_BYTES), self.label)

    def _go_get_image(self, url: str, body: dict, ctx: CallContext) -> dict:
        """An image-only Go provider (airforce): GET `url?prompt=...&model=...`, bytes back."""
        query = urlencode({"prompt": body["prompt"], "model": body.get("model") or ""})
        response = self.pool.send(
            "GET",
            f"{url}{'&' if '?' in url else '?'}{query}",
            label=self.label,
            headers={**self.headers(ctx), "Accept": "image/*"},
            timeout=self.timeout(ctx),
        )
        return image_answer(read_bytes(response, self.label, MAX_IMAGE_BYTES), self.label)[0]

    def complete(self, body: dict, ctx: CallContext) -> dict:
        answer = read_json(self._post(COMPLETIONS_PATH, body, ctx), self.label)
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if (
            not choices
            or not isinstance(choices, list)
            or not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in choices)
        ):
            raise UpstreamError(f"{self.label}: the upstream answer is not a completion")
        return answer

    def open_completion_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        options["include_usage"] = True
        body = {**body, "stream": True, "stream_options": options}
        return OpenAIStream(self._post(COMPLETIONS_PATH, body, ctx, stream=True), self.label)


def image_answer(data: bytes, label: str) -> list[dict]:
    """Image entries from a whole answer: the image itself (whatever its Content-Type says,
    as the Go proxy relayed it) or JSON holding it (`data`, `result.image`, ...)."""
    if sniff_type(data):
        return [entry_from_bytes(data, label)]
    try:
        answer = json.loads(data)
    except ValueError as err:
        raise UpstreamError(f"{label}: the upstream answer is not an image") from err
    if isinstance(answer, dict) and answer.get("error") and not answer.get("data"):
        raise body_error(answer, label)
    return entries_from_json(answer, label)
