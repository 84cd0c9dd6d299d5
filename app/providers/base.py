"""What every provider adapter offers: canonical OpenAI chat in, canonical OpenAI chat out."""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import requests

from ..config import ModelConfig
from ..errors import InvalidRequestError, UpstreamError
from ..images import MAX_IMAGE_BYTES, decode_b64, sniff_type
from ..model_ids import IdForm, check_model_id, path_part
from ..providers.http import answered_whole, api_root, json_events
from ..upstream import UpstreamPool, read_bytes, read_json, release, watch_of


@dataclass(frozen=True)
class CallContext:
    """What a provider needs to know about the client request beyond its body."""

    request_id: str
    requested_model: str | None = None
    deadline: float | None = None  # time.monotonic() by which the first byte is due
    anthropic_beta: str | None = None  # the client's `anthropic-beta`, for Anthropic upstreams


class ModelPool:
    """The shared upstream pool, with one model's idle-connection timeout applied."""

    def __init__(self, pool: UpstreamPool, idle_timeout: float) -> None:
        self._pool = pool
        self._idle_timeout = idle_timeout

    def send(self, *args, **kwargs):
        kwargs.setdefault("idle_timeout", self._idle_timeout)
        return self._pool.send(*args, **kwargs)


class ChatStream:
    """An opened upstream stream: iterate for canonical chunks; `close()` releases the upstream."""

    # The upstream's own prompt-token count once it has sent one (some do with the first chunk).
    prompt_tokens: int | None = None
    # The upstream answer the stream reads, and whether its last event has been read: a stream
    # that ended so gives its connection back to the pool; a cut or abandoned one closes it.
    response = None
    completed = False
    # Whether it ended after a finish reason but without its wire's own end (`[DONE]`): the
    # answer is relayed whole, but not stored by the cache (it may lack its usage chunk).
    ended_unmarked = False

    # Adapters that build chunks themselves set these and use _chunk / _ending.
    id: str = ""
    created: int = 0
    model: str = ""
    label: str = "upstream"

    def __init__(self, response: requests.Response, label: str, model: str = "") -> None:
        """A stream over an accepted upstream answer; adapters that build chunks themselves
        get a fresh `chatcmpl-` id and the creation time."""
        self.response = response
        self.label = label
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def __iter__(self) -> Iterator[dict]:
        raise NotImplementedError

    def answered_whole(self) -> bool:
        """Whether the upstream ignored `stream` and answered with one JSON body."""
        return answered_whole(self.response)

    def whole_answer(self) -> object:
        """That whole JSON body."""
        return read_json(self.response, self.label)

    def events(self, failure=None, *, done: str | None = "[DONE]", lists: bool = False):
        """The upstream's JSON events (see `app.providers.http.json_events`)."""
        return json_events(self, failure, done=done, lists=lists)

    def close(self) -> None:
        """Release the upstream connection; safe to call more than once."""
        if self.response is not None:
            release(self.response, reuse=self.completed)

    def _chunk(self, delta: dict, finish: str | None = None) -> dict:
        """A canonical one-choice chunk of this stream."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def _replayed(self, completion: dict) -> Iterator[dict]:
        """The chunks of a one-choice completion the upstream sent whole though asked to
        stream: the text, the tool calls (with their positions), the ending."""
        choice = completion["choices"][0]
        message = choice["message"]
        yield self._chunk({"role": "assistant", "content": message.get("content") or ""})
        calls = message.get("tool_calls") or []
        if calls:
            yield self._chunk({"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]})
        yield from self._ending(choice["finish_reason"], completion["usage"])

    def _ending(self, finish: str, usage: dict) -> Iterator[dict]:
        """The finish chunk, then the usage chunk (`"choices": []`) as OpenAI sends them."""
        yield self._chunk({}, finish)
        last = self._chunk({})
        last["choices"] = []
        last["usage"] = usage
        yield last


def chat_completion(
    choices: list[dict],
    *,
    model: str,
    usage: dict | None = None,
    id: str | None = None,
    created: int | None = None,
) -> dict:
    """A canonical `chat.completion` for translated choices; `usage` only when counted."""
    completion = {
        "id": id or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": created or int(time.time()),
        "model": model,
        "choices": choices,
    }
    if usage:
        completion["usage"] = usage
    return completion


def completion_choice(
    message: dict, finish: str | None, index: int = 0, logprobs: object = None
) -> dict:
    """One canonical completion choice."""
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


class Provider:
    """One configured deployment's adapter; providers take plain data and return plain data."""

    name: ClassVar[str] = "base"
    requires_url: ClassVar[bool] = True
    # Where this provider puts the upstream model id: the body, or the URL path.
    model_id_form: ClassVar[IdForm] = IdForm.BODY
    # The deployment's URL root (see `base_url`): endpoint suffixes a Go-style `url` may end
    # with (a string tuple, or a pattern for the end of the path), the path every endpoint sits
    # under (`/v1`), and the root when the config and the registry name none.
    endpoint_suffixes: ClassVar[tuple[str, ...] | re.Pattern] = ()
    api_path: ClassVar[str] = ""
    fallback_root: ClassVar[str] = ""

    def __init__(self, model: ModelConfig, pool: UpstreamPool, default_base_url: str | None = None):
        self.model = model
        self.pool = ModelPool(pool, model.idle_conn_timeout_seconds)
        self.default_base_url = default_base_url
        self.label = f"{model.name} ({model.provider})"

    @property
    def base_url(self) -> str:
        """The API root: `base_url`, else the Go-style `url` without its endpoint, else the
        provider's default; with or without the API's version, as `app.providers.http.api_root`
        explains."""
        configured = (
            self.model.base_url or self.model.url or self.default_base_url or self.fallback_root
        )
        return api_root(configured, self.endpoint_suffixes, self.api_path)

    def check_upstream_id(self, model_id: str) -> str:
        """A client-chosen (wildcard) upstream id, or 400 if it could leave this deployment's
        path or mean something other than it says."""
        return check_model_id(model_id, self.model_id_form)

    def model_path(self, model_id: str) -> str:
        """The upstream id checked and percent-encoded for this provider's URL path."""
        return path_part(model_id, self.model_id_form)

    def timeout(self, ctx: CallContext) -> tuple[float, float]:
        """(connect, read) timeouts, the read one cut short by the request's deadline."""
        read = self.model.timeout_seconds
        if ctx.deadline is not None:
            read = max(0.001, min(read, ctx.deadline - time.monotonic()))
        return (min(self.model.connect_timeout_seconds, read), read)

    def json_headers(self, ctx: CallContext, stream: bool = False) -> dict[str, str]:
        """The headers every JSON call upstream carries, then the model's configured extras;
        each adapter adds its own credentials."""
        return {
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
            "X-Request-ID": ctx.request_id,
            **self.model.headers,
        }

    def auth_headers(self, ctx: CallContext) -> dict[str, str]:
        """The provider's credentials: the token as a Bearer token, unless the adapter says."""
        return {"Authorization": f"Bearer {self.model.token}"} if self.model.token else {}

    def headers(self, ctx: CallContext, stream: bool = False) -> dict[str, str]:
        """The JSON headers, the model's extras, then the credentials (which always win)."""
        return {**self.json_headers(ctx, stream), **self.auth_headers(ctx)}

    def post(
        self,
        url: str,
        payload: dict | bytes,
        ctx: CallContext,
        *,
        stream: bool = False,
        headers: dict[str, str] | None = None,
        **options,
    ) -> requests.Response:
        """POST a JSON payload (or bytes already encoded) upstream with this deployment's
        headers and timeouts; `options` go to `UpstreamPool.send` (`params`, `verify`)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.pool.send(
            "POST",
            url,
            label=self.label,
            headers=self.headers(ctx, stream) if headers is None else headers,
            body=body,
            timeout=self.timeout(ctx),
            **options,
        )

    def post_json(self, url: str, payload: dict | bytes, ctx: CallContext, **options) -> object:
        """POST a JSON payload and read the whole JSON answer."""
        return read_json(self.post(url, payload, ctx, **options), self.label)

    @classmethod
    def check(cls, model: ModelConfig, default_base_url: str | None) -> list[str]:
        """Problems with a model entry that only this provider can see, as `field: message`."""
        if cls.requires_url and not (model.url or model.base_url or default_base_url):
            return [f"base_url: required for provider {model.provider!r} (or give url)"]
        return []

    def chat(self, body: dict, ctx: CallContext) -> dict:
        """A chat completion for a canonical request whose `model` is already the upstream id."""
        raise InvalidRequestError(f"The model {self.model.name!r} does not serve chat.")

    def open_chat_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        """Send a streamed chat request and return once the upstream accepted it."""
        raise InvalidRequestError(f"The model {self.model.name!r} does not serve chat.")

    def responses(self, body: dict, ctx: CallContext) -> dict:
        """A Response object for a Responses request (deployments with `responses: true`)."""
        raise InvalidRequestError(f"The model {self.model.name!r} does not serve Responses.")

    def open_responses_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        """Send a streamed Responses request; its items are `Event(type, data)`."""
        raise InvalidRequestError(f"The model {self.model.name!r} does not serve Responses.")

    def embed(self, body: dict, ctx: CallContext) -> dict:
        """An OpenAI embeddings answer for an OpenAI embeddings request."""
        raise InvalidRequestError(f"The model {self.model.name!r} does not serve embeddings.")

    def generate_image(self, body: dict, ctx: CallContext) -> list[dict]:
        """Images for an OpenAI images request: a list of {"b64_json"} or {"url"} entries."""
        raise InvalidRequestError(f"The model {self.model.name!r} does not generate images.")

    def images(self, body: dict, ctx: CallContext) -> list[dict]:
        """The OpenAI images `data` entries, in the form the client's `response_format` asks
        for: `url` (the default) or `b64_json`, each with its `revised_prompt` if it has one."""
        wanted = body.get("response_format") or "url"
        return [self._image_as(entry, wanted, ctx) for entry in self.generate_image(body, ctx)]

    def image_file(self, body: dict, ctx: CallContext) -> tuple[bytes, str]:
        """One image's bytes and media type (the Go /image answer) for an images request."""
        entries = self.generate_image({**body, "n": 1, "response_format": "b64_json"}, ctx)
        if not entries:
            raise UpstreamError(f"{self.label}: the upstream answer holds no image")
        data = self.image_bytes(entries[0], ctx)
        media = sniff_type(data)
        if media is None:
            raise UpstreamError(f"{self.label}: the upstream answer is not an image")
        return bytes(data), media

    def image_bytes(self, entry: dict, ctx: CallContext) -> bytes:
        """The bytes of an image entry: decoded, or fetched from the URL the upstream gave,
        through this deployment's pool and timeouts."""
        if entry.get("b64_json"):
            return decode_b64(entry["b64_json"], self.label)
        url = entry.get("url", "")
        if url.startswith("data:"):
            return decode_b64(url, self.label)
        if not url.startswith(("https://", "http://")):
            raise UpstreamError(f"{self.label}: the upstream image URL is not http(s)")
        response = self.pool.send(
            "GET", url, label=self.label, headers={"Accept": "image/*"}, timeout=self.timeout(ctx)
        )
        return read_bytes(response, self.label, MAX_IMAGE_BYTES)

    def _image_as(self, entry: dict, wanted: str, ctx: CallContext) -> dict:
        extra = {"revised_prompt": entry["revised_prompt"]} if entry.get("revised_prompt") else {}
        if wanted == "b64_json":
            if entry.get("b64_json"):
                return {"b64_json": entry["b64_json"], **extra}
            data = self.image_bytes(entry, ctx)
            return {"b64_json": base64.b64encode(data).decode(), **extra}
        if entry.get("url"):
            return {"url": entry["url"], **extra}
        # No place to host the bytes: a data URL is a URL every client can read.
        data = self.image_bytes(entry, ctx)
        media = sniff_type(data) or "image/png"
        return {"url": f"data:{media};base64,{base64.b64encode(data).decode()}", **extra}

    def complete(self, body: dict, ctx: CallContext) -> dict:
        """A legacy OpenAI text completion."""
        raise InvalidRequestError(f"The model {self.model.name!r} does not serve completions.")

    def open_completion_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        raise InvalidRequestError(f"The model {self.model.name!r} does not serve completions.")

    # Providers that speak Anthropic Messages natively take /v1/messages requests as they are.
    native_messages: ClassVar[bool] = False

    def messages(self, body: dict, ctx: CallContext) -> dict:
        """An Anthropic Messages request answered natively (only if `native_messages`)."""
        raise NotImplementedError

    def open_messages_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        """A native Anthropic event stream: iterate for (event name, payload) pairs."""
        raise NotImplementedError

    # Providers that speak the Gemini API natively take its requests as they are.
    native_gemini: ClassVar[bool] = False

    def generate_content(self, model: str, body: dict, ctx: CallContext) -> dict:
        """A Gemini GenerateContentRequest answered natively (only if `native_gemini`)."""
        raise NotImplementedError

    def open_generate_stream(self, model: str, body: dict, ctx: CallContext) -> ChatStream:
        """A native Gemini stream: iterate for its responses (only if `native_gemini`)."""
        raise NotImplementedError

    def count_gemini_tokens(self, model: str, body: dict, ctx: CallContext) -> int:
        """The provider's own count for a Gemini countTokens body (only if `native_gemini`)."""
        raise NotImplementedError

    def count_tokens(self, body: dict, ctx: CallContext) -> int | None:
        """The provider's own input-token count for an Anthropic Messages body, if it has one."""
        return None


class CountingStream(ChatStream):
    """A stream of an upstream that may not count usage: it keeps the request and the answer's
    text for an estimate, and the position of each tool call it has relayed."""

    def __init__(self, response: requests.Response, body: dict, label: str) -> None:
        super().__init__(response, label, body.get("model") or "")
        self.body = body
        self.texts: list[str] = []
        self.tool_index: dict[object, int] = {}


class PrimedStream(ChatStream):
    """A stream whose first chunk was read before the client saw a byte.

    Failing up to then is still an ordinary failure that routing can fall back from; after it,
    failures end the stream in-band.
    """

    def __init__(self, stream: ChatStream, label: str) -> None:
        self.stream = stream
        self._chunks = iter(stream)
        self.head: list = []
        try:
            # Read up to the first chunk that answers something: usage alone is not an answer.
            while True:
                item = next(self._chunks)
                self.head.append(item)
                if not isinstance(item, dict) or item.get("choices"):
                    break
        except StopIteration:
            stream.close()
            raise UpstreamError(
                f"{label}: the upstream ended the stream without an answer"
            ) from None
        except BaseException:
            stream.close()
            raise
        watch = watch_of(stream.response) if stream.response is not None else None
        if watch is not None:
            # It answered: from now on the whole stream's deadline bounds its reads.
            watch.answered()

    @property
    def prompt_tokens(self) -> int | None:
        return self.stream.prompt_tokens

    @property
    def ended_unmarked(self) -> bool:
        return self.stream.ended_unmarked

    def __iter__(self) -> Iterator[dict]:
        # Each chunk read ahead is let go once relayed: not kept for the stream's whole life.
        while self.head:
            yield self.head.pop(0)
        yield from self._chunks

    def close(self) -> None:
        self.stream.close()
