"""Any OpenAI-compatible endpoint: the canonical form is its wire format, so this mostly relays."""

from __future__ import annotations

import json
from urllib.parse import urlencode, urlsplit

from ..config import GO_IMAGE_PROVIDERS, is_api_root, url_endpoint
from ..errors import UpstreamError
from ..images import MAX_IMAGE_BYTES, entries_from_json, entry_from_bytes, sniff_type
from ..providers.base import CallContext, ChatStream, Provider
from ..providers.responses_wire import RESPONSES_PATH, ResponsesStream, response_answer
from ..providers.wire import OpenAIStream, chat_answer, completion_answer, with_usage
from ..upstream import body_error, read_bytes

CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"
EMBEDDINGS_PATH = "/embeddings"
IMAGES_PATH = "/images/generations"


class OpenAIProvider(Provider):
    name = "openai"

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

    def chat(self, body: dict, ctx: CallContext) -> dict:
        return chat_answer(self.post_json(self.endpoint(CHAT_PATH), body, ctx), self.label)

    def open_chat_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        response = self.post(self.endpoint(CHAT_PATH), with_usage(body), ctx, stream=True)
        return OpenAIStream(response, self.label)

    def responses(self, body: dict, ctx: CallContext) -> dict:
        answer = self.post_json(self.endpoint(RESPONSES_PATH), body, ctx)
        return response_answer(answer, self.label)

    def open_responses_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        response = self.post(
            self.endpoint(RESPONSES_PATH), {**body, "stream": True}, ctx, stream=True
        )
        return ResponsesStream(response, self.label)

    def embed(self, body: dict, ctx: CallContext) -> dict:
        answer = self.post_json(self.endpoint(EMBEDDINGS_PATH), body, ctx)
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            raise UpstreamError(f"{self.label}: the upstream answer is not an embedding list")
        return answer

    def generate_image(self, body: dict, ctx: CallContext) -> list[dict]:
        url = self.model.url if not self.model.base_url else None
        if self.model.provider in GO_IMAGE_PROVIDERS and url:
            return [self._go_get_image(url, body, ctx)]
        if not url or url_endpoint(url)[0] == IMAGES_PATH or is_api_root(url):
            return entries_from_json(
                self.post_json(self.endpoint(IMAGES_PATH), body, ctx), self.label
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
        headers = {**self.headers(ctx), "Accept": "image/png, image/jpeg, */*"}
        response = self.post(url, payload, ctx, headers=headers)
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
        answer = self.post_json(self.endpoint(COMPLETIONS_PATH), body, ctx)
        return completion_answer(answer, self.label)

    def open_completion_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        response = self.post(self.endpoint(COMPLETIONS_PATH), with_usage(body), ctx, stream=True)
        return OpenAIStream(response, self.label)


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
