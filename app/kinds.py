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


# Chat finish reasons of answers that did not end well, as the adapters write them (Gemini's
# reasons OpenAI has no word for, lower-cased): no surface calls such an answer complete, and
# the cache never stores one. Any other reason a server invents (`eos`, `eos_token`) is a stop.
FAILED_FINISHES = frozenset(
    {
        "malformed_function_call",
        "unexpected_tool_call",
        "too_many_tool_calls",
        "language",
        "no_image",
        "image_other",
        "other",
    }
)
