"""The built-in offline `echo` provider: answers with the last user message, word by word."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

from ..content import content_text
from ..providers.base import CallContext, ChatStream, Provider, chat_completion, completion_choice
from ..tokens import estimate_tokens


def _answer(body: dict) -> tuple[list[str], str, dict]:
    """The words of the answer, its finish reason and its usage."""
    messages = body.get("messages") or []
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    text = content_text(last_user.get("content")) if last_user else ""
    words = text.split()
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    finish = "stop"
    if isinstance(limit, int) and 0 < limit < len(words):
        words, finish = words[:limit], "length"
    prompt = sum(estimate_tokens(content_text(m.get("content"))) for m in messages)
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": len(words),
        "total_tokens": prompt + len(words),
    }
    return words, finish, usage


class EchoProvider(Provider):
    name = "echo"
    requires_url = False

    def chat(self, body: dict, ctx: CallContext) -> dict:
        words, finish, usage = _answer(body)
        message = {"role": "assistant", "content": " ".join(words)}
        return chat_completion(
            [completion_choice(message, finish)],
            model=body.get("model") or self.model.name,
            usage=usage,
        )

    def open_chat_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        return EchoStream(body.get("model") or self.model.name, *_answer(body))


class EchoStream(ChatStream):
    def __init__(self, model: str, words: list[str], finish: str, usage: dict) -> None:
        self.model, self.words, self.finish, self.usage = model, words, finish, usage
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def __iter__(self) -> Iterator[dict]:
        yield self._chunk({"role": "assistant", "content": ""})
        for i, word in enumerate(self.words):
            yield self._chunk({"content": word if i == 0 else " " + word})
        yield self._chunk({}, self.finish)
        usage_chunk = self._chunk({})
        usage_chunk["choices"] = []
        usage_chunk["usage"] = self.usage
        yield usage_chunk
