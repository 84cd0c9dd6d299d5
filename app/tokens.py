"""Token estimates for when an upstream reports no usage."""

from __future__ import annotations

import json
import math

from .content import content_text

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """About four characters a token, as OpenAI's guidance has it; at least 1 for any text."""
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


# What an image part is reserved and estimated at: OpenAI's price of a 1024x1024 image in high
# detail (a low-detail image: 85). Its bytes are not text.
IMAGE_TOKENS = 765
LOW_DETAIL_IMAGE_TOKENS = 85
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


def prompt_estimate(body: dict) -> int:
    """Prompt tokens of a chat-shaped request (the canonical form every surface translates
    to), estimated from everything the model is sent: the messages' text, their tool calls and
    images, the tool definitions and a response schema; a legacy completion's `prompt` too."""
    total = 0
    for message in body.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        total += estimate_tokens(content_text(content))
        if isinstance(content, list):
            total += sum(_image_tokens(part) for part in content if isinstance(part, dict))
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                total += _call_tokens(call.get("function"))
        total += _call_tokens(message.get("function_call"))
    for name in ("tools", "functions", "response_format"):
        value = body.get(name)
        if value:
            total += estimate_tokens(json.dumps(value, separators=(",", ":"), default=str))
    return total + _legacy_prompt_tokens(body.get("prompt"))


def _image_tokens(part: dict) -> int:
    if part.get("type") not in _IMAGE_PARTS:
        return 0
    image = part.get("image_url")
    detail = image.get("detail") if isinstance(image, dict) else part.get("detail")
    return LOW_DETAIL_IMAGE_TOKENS if detail == "low" else IMAGE_TOKENS


def _call_tokens(function: object) -> int:
    """A tool call the model made earlier: its name and arguments are prompt now."""
    if not isinstance(function, dict):
        return 0
    name, arguments = function.get("name"), function.get("arguments")
    text = (name if isinstance(name, str) else "") + (
        arguments if isinstance(arguments, str) else json.dumps(arguments, default=str)
    )
    return estimate_tokens(text) if arguments is not None or name else 0


def _legacy_prompt_tokens(prompt: object) -> int:
    """A legacy completion's prompt: a string, strings, token ids, or lists of token ids."""
    if isinstance(prompt, str):
        return estimate_tokens(prompt)
    if not isinstance(prompt, list):
        return 0
    total = 0
    for item in prompt:
        if isinstance(item, str):
            total += estimate_tokens(item)
        elif isinstance(item, list):
            total += len(item)  # one prompt as token ids: exactly that many
        elif isinstance(item, int):
            total += 1  # the prompt itself is token ids
    return total


def usage_numbers(usage: object, body: dict, completion_text: str) -> tuple[int, int]:
    """(prompt, completion) tokens: the upstream's usage, else estimates.

    Anthropic's `input_tokens` leaves out what its prompt cache read or wrote, which is prompt
    all the same. A count that is not a whole number of tokens (missing, negative, a float)
    is not believed: a missing completion is the total less the prompt, else the answer's text
    counted (embeddings have none), and nothing counts below zero.
    """
    if isinstance(usage, dict):
        prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        if prompt is not None:
            if "prompt_tokens" not in usage:
                for cached in ("cache_read_input_tokens", "cache_creation_input_tokens"):
                    prompt += _count(usage.get(cached)) or 0
            completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
            if completion is None:
                total = _count(usage.get("total_tokens"))
                if total is not None and total >= prompt:
                    completion = total - prompt
                else:
                    completion = estimate_tokens(completion_text)
            return prompt, completion
    return prompt_estimate(body), estimate_tokens(completion_text)


def _count(value: object) -> int | None:
    """A token count as an upstream may give it: a non-negative whole number, else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if value >= 0 else None


def cost_usd(model, prompt: int, completion: int) -> float:
    """What an answer cost at the model's configured prices (USD per million tokens)."""
    return (prompt * model.input_cost_per_mtok + completion * model.output_cost_per_mtok) / 1e6
