"""`strip_think`: drop `<think>...</think>` reasoning from answers, also across stream chunks."""

from __future__ import annotations

from collections.abc import Iterator

OPEN, CLOSE = "<think>", "</think>"


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that could be the start of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


class ThinkFilter:
    """Feeds text in pieces, returns what is visible; holds back what may be a split tag."""

    def __init__(self) -> None:
        self.inside = False
        self.pending = ""
        self.after_close = False
        self.emitted = False

    def feed(self, text: str) -> str:
        buffer = self.pending + text
        self.pending = ""
        out: list[str] = []
        while buffer:
            if self.inside:
                end = buffer.find(CLOSE)
                if end < 0:
                    keep = _partial_suffix(buffer, CLOSE)
                    self.pending = buffer[len(buffer) - keep :] if keep else ""
                    return "".join(out)
                buffer = buffer[end + len(CLOSE) :]
                self.inside, self.after_close = False, True
                continue
            if self.after_close and not (self.emitted or any(out)):
                # The blank lines a model puts after leading reasoning go with it.
                buffer = buffer.lstrip()
                if not buffer:
                    break
                self.after_close = False
            start = buffer.find(OPEN)
            if start >= 0:
                out.append(buffer[:start])
                buffer = buffer[start + len(OPEN) :]
                self.inside = True
                continue
            keep = _partial_suffix(buffer, OPEN)
            out.append(buffer[: len(buffer) - keep])
            self.pending = buffer[len(buffer) - keep :]
            break
        visible = "".join(out)
        self.emitted = self.emitted or bool(visible)
        return visible

    def flush(self) -> str:
        """What is left at the end: a held-back fragment that was not a tag after all."""
        rest, self.pending = ("" if self.inside else self.pending), ""
        return rest


def strip_think(text: str) -> str:
    think = ThinkFilter()
    return think.feed(text) + think.flush()


def strip_answer(answer: dict) -> dict:
    """A chat completion with reasoning removed from every choice's content."""
    for choice in answer.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            message["content"] = strip_think(message["content"])
    return answer


def strip_stream(chunks) -> Iterator[dict]:
    """Chunks with reasoning removed from `delta.content`, per choice index."""
    filters: dict[int, ThinkFilter] = {}
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            think = filters.setdefault(choice.get("index", 0), ThinkFilter())
            if isinstance(delta.get("content"), str):
                delta["content"] = think.feed(delta["content"])
            if choice.get("finish_reason"):
                rest = think.flush()
                if rest:
                    delta["content"] = (delta.get("content") or "") + rest
        yield chunk
