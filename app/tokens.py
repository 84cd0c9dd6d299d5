"""Token estimates for when an upstream reports no usage."""

from __future__ import annotations

import math

CHARS_PER_TOKEN = 4


def message_text(content: object) -> str:
    """The text of a message's `content`: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return ""


def estimate_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's guidance has it; at least 1 for any text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0
