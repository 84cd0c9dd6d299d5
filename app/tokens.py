"""Token estimates for when an upstream reports no usage."""

from __future__ import annotations

import math

from .content import content_text

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's guidance has it; at least 1 for any text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def prompt_estimate(body: dict) -> int:
    """Prompt tokens of a chat request, estimated from its messages' text."""
    messages = body.get("messages") or []
    return sum(
        estimate_tokens(content_text(m.get("content"))) for m in messages if isinstance(m, dict)
    )


def usage_numbers(usage: object, body: dict, completion_text: str) -> tuple[int, int]:
    """(prompt, completion) tokens: the upstream's usage, else estimates."""
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        if isinstance(prompt, int):
            # Embeddings report prompt tokens only.
            return prompt, completion if isinstance(completion, int) else 0
    return prompt_estimate(body), estimate_tokens(completion_text)


def cost_usd(model, prompt: int, completion: int) -> float:
    """What an answer cost at the model's configured prices (USD per million tokens)."""
    return (prompt * model.input_cost_per_mtok + completion * model.output_cost_per_mtok) / 1e6
