"""The proxy's closed sets: the API surfaces it serves and the kinds of model it routes to."""

from __future__ import annotations

from enum import StrEnum


class Surface(StrEnum):
    """An API surface: the shape of its requests, answers, streams and errors."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    RESPONSES = "responses"  # OpenAI's Responses API: OpenAI's error shape, its own stream events
    GEMINI = "gemini"


class Kind(StrEnum):
    """What a model deployment serves (`kind:` in the config)."""

    CHAT = "chat"
    EMBEDDING = "embedding"
    IMAGE = "image"
