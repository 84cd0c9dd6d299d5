"""Sber GigaChat: an OAuth access token per deployment, and OpenAI tools mapped to its functions.

The chat API is close to OpenAI's, but function calling is the older `functions` /
`function_call` form with arguments as JSON objects, and tool results are `function` messages.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import requests

from ..config import ModelConfig
from ..errors import UpstreamClientError, UpstreamError, upstream_shape
from ..providers.base import CallContext, ChatStream, Provider, chat_completion, completion_choice
from ..providers.gigachat_request import to_gigachat
from ..providers.http import Event
from ..redact import REDACTOR
from ..streaming import utf8_json
from ..upstream import UpstreamPool, error_message, read_json

DEFAULT_BASE_URL = "https://gigachat.devices.sberbank.ru/api/v1"
DEFAULT_AUTH_URL = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
DEFAULT_SCOPE = "GIGACHAT_API_PERS"
# Access tokens live 30 minutes; one is renewed this long before it expires.
TOKEN_MARGIN_SECONDS = 60.0
DEFAULT_TOKEN_LIFETIME_SECONDS = 30 * 60.0
CHAT_PATH = "/chat/completions"

# GigaChat's finish reasons in OpenAI's words ("error" is raised, not mapped).
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "function_call": "tool_calls",
    "blacklist": "content_filter",
}


class GigaChatProvider(Provider):
    name = "gigachat"
    endpoint_suffixes = (CHAT_PATH,)
    api_path = "/api/v1"  # as the SDK takes it; a bare host or `.../api` gets the rest
    fallback_root = DEFAULT_BASE_URL

    def __init__(
        self, model: ModelConfig, pool: UpstreamPool, default_base_url: str | None = None
    ) -> None:
        super().__init__(model, pool, default_base_url)
        # (access token, time.time() after which it is renewed); one refresh at a time.
        self._token: tuple[str, float] | None = None
        self._token_lock = threading.Lock()

    @classmethod
    def check(cls, model: ModelConfig, default_base_url: str | None) -> list[str]:
        problems = super().check(model, default_base_url)
        if not model.token:
            problems.append(
                "token: required for provider 'gigachat' "
                "(the authorization key, or client_id:client_secret)"
            )
        return problems

    # --- settings that ModelConfig may not have yet -------------------------------------------

    @property
    def scope(self) -> str:
        return getattr(self.model, "scope", None) or DEFAULT_SCOPE

    @property
    def auth_url(self) -> str:
        return getattr(self.model, "auth_url", None) or DEFAULT_AUTH_URL

    def tls(self) -> dict[str, str]:
        """`verify=` for a configured CA bundle (GigaChat uses the Russian Trusted Root CA)."""
        ca_bundle = getattr(self.model, "ca_bundle", None)
        return {"verify": ca_bundle} if ca_bundle else {}

    # --- access tokens ------------------------------------------------------------------------

    def authorization_key(self) -> str:
        """The Base64 authorization key; the Go proxy's `client_id:client_secret` is encoded."""
        token = (self.model.token or "").strip()
        if ":" in token:
            return base64.b64encode(token.encode("utf-8")).decode("ascii")
        return token

    def access_token(self, ctx: CallContext, stale: str | None = None) -> str:
        """A cached access token, fetched when missing, near expiry, or equal to `stale`."""
        cached = self._token
        if cached and cached[0] != stale and time.time() < cached[1]:
            return cached[0]
        with self._token_lock:
            # Another thread may have renewed it while this one waited.
            cached = self._token
            if cached and cached[0] != stale and time.time() < cached[1]:
                return cached[0]
            token, expires = self._fetch_token(ctx)
            self._token = (token, expires - TOKEN_MARGIN_SECONDS)
            return token

    def _fetch_token(self, ctx: CallContext) -> tuple[str, float]:
        headers = {
            "Authorization": f"Basic {self.authorization_key()}",
            "RqUID": str(uuid.uuid4()),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
            "X-Request-ID": ctx.request_id,
        }
        try:
            response = self.pool.send(
                "POST",
                self.auth_url,
                label=self.label,
                headers=headers,
                body=urlencode({"scope": self.scope}).encode(),
                timeout=self.timeout(ctx),
                **self.tls(),
            )
        except UpstreamClientError as err:
            # A refused token request is the deployment's fault, never the client's.
            raise UpstreamError(
                f"{self.label}: getting an access token failed: {err.message}"
            ) from err
        answer = read_json(response, self.label)
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise UpstreamError(f"{self.label}: the OAuth answer has no access token")
        # A credential too: scrubbed from error messages and logs like the configured ones.
        REDACTOR.register_transient(token)
        expires_at = answer.get("expires_at")
        if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
            # Documented in milliseconds; a value in seconds is taken as such.
            expires = expires_at / 1000 if expires_at > 1e11 else float(expires_at)
        else:
            expires = time.time() + DEFAULT_TOKEN_LIFETIME_SECONDS
        return token, expires

    # --- chat ---------------------------------------------------------------------------------

    def _send_chat(self, payload: dict, ctx: CallContext, stream: bool) -> requests.Response:
        """POST the chat request; on a 401 the access token is renewed once and sent again."""
        body = utf8_json(payload).encode()
        token = self.access_token(ctx)
        try:
            return self._post_chat(token, body, ctx, stream)
        except UpstreamError as err:
            if not _unauthorized(err):
                raise
        return self._post_chat(self.access_token(ctx, stale=token), body, ctx, stream)

    def _post_chat(
        self, token: str, body: bytes, ctx: CallContext, stream: bool
    ) -> requests.Response:
        headers = {**self.json_headers(ctx, stream), "Authorization": f"Bearer {token}"}
        return self.post(self.base_url + CHAT_PATH, body, ctx, headers=headers, **self.tls())

    def chat(self, body: dict, ctx: CallContext) -> dict:
        response = self._send_chat(to_gigachat(body, stream=False), ctx, stream=False)
        answer = read_json(response, self.label)
        return to_completion(answer, self.label, body.get("model") or self.model.name)

    def open_chat_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        response = self._send_chat(to_gigachat(body, stream=True), ctx, stream=True)
        return GigaChatStream(response, self.label, body.get("model") or self.model.name)


def _stream_failure(event: Event) -> str | None:
    """The message of an in-band error: an `error` event, or a chunk with no choices that
    carries `error`, `message` or `status`."""
    chunk = event.data
    if event.name == "error" or (
        "choices" not in chunk and any(k in chunk for k in ("error", "message", "status"))
    ):
        return error_message(chunk)[0] or "unknown error"
    return None


def _unauthorized(err: UpstreamError) -> bool:
    """Whether the upstream answered 401 (its access token expired or was revoked)."""
    status = getattr(err, "upstream_status", None)
    if status is not None:
        return status == 401
    return not isinstance(err, UpstreamClientError) and "credentials (401)" in err.message


# --- answers --------------------------------------------------------------------------------


@upstream_shape
def to_completion(answer: object, label: str, model: str) -> dict:
    """A GigaChat answer as an OpenAI `chat.completion`."""
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        raise UpstreamError(f"{label}: the upstream answer is not a chat completion")
    choices = []
    for position, choice in enumerate(answer["choices"]):
        if not isinstance(choice, dict):
            raise UpstreamError(f"{label}: the upstream answer is not a chat completion")
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        content = message.get("content") if isinstance(message.get("content"), str) else ""
        out = {"role": "assistant", "content": content}
        call = message.get("function_call")
        if isinstance(call, dict) and call.get("name"):
            out["content"] = content or None
            out["tool_calls"] = [
                {
                    "id": _call_id(),
                    "type": "function",
                    "function": {"name": call["name"], "arguments": _arguments_text(call)},
                }
            ]
        if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
            out["reasoning_content"] = message["reasoning_content"]
        reason = _finish_reason(choice.get("finish_reason"), label)
        choices.append(completion_choice(out, reason, choice.get("index", position)))
    return chat_completion(
        choices,
        model=answer.get("model") or model,
        usage=to_usage(answer.get("usage")),
        created=answer.get("created"),
    )


def to_usage(usage: object) -> dict | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = usage.get("total_tokens")
    result = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if isinstance(total, int) else prompt + completion,
    }
    cached = usage.get("precached_prompt_tokens")
    if isinstance(cached, int):
        result["prompt_tokens_details"] = {"cached_tokens": cached}
    return result


def _finish_reason(reason: object, label: str) -> str | None:
    if reason is None:
        return None
    if reason == "error":
        raise UpstreamError(f"{label}: the upstream stopped with an error")
    return FINISH_REASONS.get(str(reason), "stop")


def _arguments_text(call: dict) -> str:
    arguments = call.get("arguments")
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class GigaChatStream(ChatStream):
    """OpenAI chunks from GigaChat's SSE stream (`data:` chunks ending with `[DONE]`)."""

    def __init__(self, response: requests.Response, label: str, model: str) -> None:
        super().__init__(response, label, model)
        self._started = False
        self._calls: dict[int, str] = {}  # choice index -> its tool call's id
        self._arguments_sent: set[int] = set()

    @upstream_shape
    def __iter__(self) -> Iterator[dict]:
        if self.answered_whole():
            # The upstream answered whole: replay it as chunks.
            yield from self._replay(to_completion(self.whole_answer(), self.label, self.model))
            return
        for _name, chunk in self.events(_stream_failure):
            yield from self._translate(chunk)

    def _chunk(self, choices: list[dict], chunk: dict | None = None) -> dict:
        chunk = chunk or {}
        if chunk.get("model"):
            self.model = chunk["model"]
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": chunk.get("created") or self.created,
            "model": self.model,
            "choices": choices,
        }

    def _emit(self, index: int, delta: dict, finish: str | None, chunk: dict) -> dict:
        if not self._started:
            delta = {"role": "assistant", **delta}
            self._started = True
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._chunk([choice], chunk)

    def _translate(self, chunk: dict) -> Iterator[dict]:
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                raise UpstreamError(f"{self.label}: the stream sent an unexpected event")
            index = choice.get("index", 0)
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            text: dict = {}
            content = delta.get("content")
            if isinstance(content, str) and (content or not self._started):
                text["content"] = content
            reasoning = delta.get("reasoning_content")
            if isinstance(reasoning, str) and reasoning:
                text["reasoning_content"] = reasoning
            if text or not self._started:
                yield self._emit(index, text, None, chunk)
            for tool_delta in self._tool_deltas(index, delta.get("function_call")):
                yield self._emit(index, {"tool_calls": [tool_delta]}, None, chunk)
            reason = choice.get("finish_reason")
            if reason is not None:
                if index in self._calls and index not in self._arguments_sent:
                    # A call whose arguments never came has none: "{}" keeps them valid JSON.
                    self._arguments_sent.add(index)
                    args = {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
                    yield self._emit(index, args, None, chunk)
                yield self._emit(index, {}, _finish_reason(reason, self.label), chunk)
        usage = to_usage(chunk.get("usage"))
        if usage:
            yield {**self._chunk([], chunk), "usage": usage}

    def _tool_deltas(self, index: int, call: object) -> list[dict]:
        """The OpenAI tool-call deltas for a `function_call` delta (name, then arguments)."""
        if not isinstance(call, dict):
            return []
        deltas = []
        if index not in self._calls:
            self._calls[index] = _call_id()
            deltas.append(
                {
                    "index": 0,
                    "id": self._calls[index],
                    "type": "function",
                    "function": {"name": call.get("name") or "", "arguments": ""},
                }
            )
        if call.get("arguments") is not None:
            self._arguments_sent.add(index)
            deltas.append({"index": 0, "function": {"arguments": _arguments_text(call)}})
        return deltas

    def _replay(self, answer: dict) -> Iterator[dict]:
        for choice in answer["choices"]:
            message = dict(choice["message"])
            message.pop("role", None)
            if message.get("tool_calls"):
                message["tool_calls"] = [
                    {"index": i, **call} for i, call in enumerate(message["tool_calls"])
                ]
            yield self._emit(choice["index"], message, choice["finish_reason"], answer)
        if answer.get("usage"):
            yield {**self._chunk([], answer), "usage": answer["usage"]}
