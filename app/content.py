"""The text of message content, however a surface or provider shapes it: one helper for all."""

from __future__ import annotations


def content_text(content: object, sep: str = " ", kind: str | None = None) -> str:
    """The text of a message's `content`: a string as it is, or the text of a list's parts
    joined by `sep`.

    A part is a string, or an object with a string `text`; with `kind`, only objects whose
    `type` is `kind` count (Anthropic blocks other than text can carry text of their own).
    Anything else has no text.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if isinstance(part, dict):
            if isinstance(part.get("text"), str) and (kind is None or part.get("type") == kind):
                texts.append(part["text"])
        elif isinstance(part, str) and kind is None:
            texts.append(part)
    return sep.join(texts)
