"""Any OpenAI-compatible endpoint: the canonical form is its wire format, so this mostly relays."""

from __future__ import annotations

import json
from collections.abc import Iterator

import requests

from app.errors import UpstreamError
from app.images import MAX_IMAGE_BYTES, entries_from_json, entry_from_bytes
from app.providers.base import CallContext, ChatStream, Provider
from app.streaming import iter_sse
from app.upstream import error_message, read_bytes, read_chunks, read_json, safe_text

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
            url = self.model.url.rstrip("/")
            return url[: -len(CHAT_PATH)] if url.endswith(CHAT_PATH) else url
        return (self.default_base_url or "").rstrip("/")

    def endpoint(self, path: str) -> str:
        """A Go-style `url` ending in /chat/completions is that endpoint; any other is the root."""
        if path == CHAT_PATH and self.model.url and not self.model.base_url:
            url = self.model.url.rstrip("/")
            return url if url.endswith(CHAT_PATH) else url + path
        return self.base_url + path

    def headers(self, ctx: CallContext, stream: bool = False) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "X-Request-ID": ctx.request_id,
        }
        headers.update(self.model.headers)
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
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamError(f"{self.label}: the upstream answer is not a chat completion")
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
        url = (self.model.url or "").rstrip("/")
        if url and not self.model.base_url and not url.endswith(IMAGES_PATH):
            # A Go-style inference endpoint (Hugging Face and kin): {"inputs": prompt} in,
            # the image bytes (or a JSON wrapper around them) out.
            payload = {"inputs": body["prompt"]}
            if body.get("size") and "x" in str(body["size"]):
                width, _, height = str(body["size"]).partition("x")
                if width.isdigit() and height.isdigit():
                    payload["parameters"] = {"width": int(width), "height": int(height)}
            response = self.pool.send(
                "POST",
                url,
                label=self.label,
                headers={**self.headers(ctx), "Accept": "image/png, image/jpeg, */*"},
                body=json.dumps(payload).encode(),
                timeout=self.timeout(ctx),
            )
            if response.headers.get("Content-Type", "").startswith("image/"):
                return [
                    entry_from_bytes(read_bytes(response, self.label, MAX_IMAGE_BYTES), self.label)
                ]
            return entries_from_json(read_json(response, self.label), self.label)
        return entries_from_json(
            read_json(self._post(IMAGES_PATH, body, ctx), self.label), self.label
        )

    def complete(self, body: dict, ctx: CallContext) -> dict:
        answer = read_json(self._post(COMPLETIONS_PATH, body, ctx), self.label)
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamError(f"{self.label}: the upstream answer is not a completion")
        return answer

    def open_completion_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        options = body.get("stream_options")
        options = dict(options) if isinstance(options, dict) else {}
        options["include_usage"] = True
        body = {**body, "stream": True, "stream_options": options}
        return OpenAIStream(self._post(COMPLETIONS_PATH, body, ctx, stream=True), self.label)


class OpenAIStream(ChatStream):
    """Chunks from an OpenAI-style SSE stream, or from a whole answer if upstream ignored stream."""

    def __init__(self, response: requests.Response, label: str) -> None:
        self.response = response
        self.label = label

    def __iter__(self) -> Iterator[dict]:
        content_type = self.response.headers.get("Content-Type", "")
        if "application/json" in content_type:
            yield from completion_to_chunks(read_json(self.response, self.label), self.label)
            return
        finished = False
        for event in iter_sse(read_chunks(self.response, self.label), self.label):
            if event.data == "[DONE]":
                return
            try:
                chunk = json.loads(event.data)
            except ValueError as err:
                raise UpstreamError(f"{self.label}: the stream sent invalid JSON") from err
            if not isinstance(chunk, dict):
                raise UpstreamError(f"{self.label}: the stream sent an unexpected event")
            if "error" in chunk and "choices" not in chunk:
                message, _ = error_message(chunk)
                raise UpstreamError(
                    f"{self.label}: the stream failed: {safe_text(message or 'unknown error')}"
                )
            finished = finished or any(
                isinstance(c, dict) and c.get("finish_reason") for c in chunk.get("choices") or ()
            )
            yield chunk
        if not finished:
            # Neither [DONE] nor a finish reason: the stream was cut, not completed.
            raise UpstreamError(f"{self.label}: the stream ended before its answer was complete")

    def close(self) -> None:
        self.response.close()


def completion_to_chunks(answer: object, label: str) -> Iterator[dict]:
    """The chunks a streamed answer would have had, for upstreams that answer whole."""
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        raise UpstreamError(f"{label}: the upstream answer is not a chat completion")
    base = {
        "id": answer.get("id", "chatcmpl-proxy"),
        "object": "chat.completion.chunk",
        "created": answer.get("created", 0),
        "model": answer.get("model", ""),
    }
    for choice in answer["choices"]:
        message = dict(choice.get("message") or {})
        delta = {"role": message.pop("role", "assistant"), **message}
        yield {
            **base,
            "choices": [
                {
                    "index": choice.get("index", 0),
                    "delta": delta,
                    "finish_reason": choice.get("finish_reason"),
                }
            ],
        }
    if answer.get("usage"):
        yield {**base, "choices": [], "usage": answer["usage"]}
