"""Response objects of the OpenAI Responses surface: the output items, the usage, and a
canonical chat completion as a Response (completed, or incomplete when it ran out of tokens)."""

from __future__ import annotations

import json
import secrets
import time

from .content import content_text
from .errors import upstream_shape
from .kinds import FAILED_FINISHES
from .tokens import estimate_tokens

INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def incomplete_reason(finish: object) -> str | None:
    """Why a Response with this chat finish reason is incomplete (None: it is complete). An
    answer that did not end well (one of FAILED_FINISHES, as Gemini's `malformed_function_call`)
    is incomplete with that reason, never `completed`; a reason a server invents (`eos`) is a
    normal end."""
    if finish in FAILED_FINISHES:
        return str(finish)
    return INCOMPLETE.get(finish)


def new_id(prefix: str) -> str:
    """An id in OpenAI's form (`resp_...`, `msg_...`, `fc_...`), unguessable."""
    return f"{prefix}_{secrets.token_hex(24)}"


def response_usage(usage: object, prompt_estimate: int, output_text: str) -> dict:
    """Chat usage as Responses usage; estimates where the upstream counted nothing."""
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    output = usage.get("completion_tokens", usage.get("output_tokens"))
    prompt = prompt if isinstance(prompt, int) else prompt_estimate
    output = output if isinstance(output, int) else estimate_tokens(output_text)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": cached if isinstance(cached, int) else 0,
            # Chat usage does not say what was written to a prompt cache.
            "cache_write_tokens": 0,
        },
        "output_tokens": output,
        "output_tokens_details": {
            "reasoning_tokens": reasoning if isinstance(reasoning, int) else 0
        },
        "total_tokens": prompt + output,
    }


def message_item(text: str, status: str = "completed", item_id: str | None = None) -> dict:
    return {
        "id": item_id or new_id("msg"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    }


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_item(refusal: str, status: str = "completed") -> dict:
    """A message whose content is the model's refusal (structured outputs refuse so)."""
    return {
        "id": new_id("msg"),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "refusal", "refusal": refusal}],
    }


def call_item(
    call_id: str, name: str, arguments: str, status: str = "completed", item_id: str | None = None
) -> dict:
    return {
        "id": item_id or new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def skeleton(body: dict, response_id: str, model: str, created_at: int | None = None) -> dict:
    """A Response object in progress, echoing the request as OpenAI's does."""
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    tools = [t for t in body.get("tools") or () if isinstance(t, dict)]
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at or int(time.time()),
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": tools,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": None,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def finished(response: dict, finish: str | None, usage: dict) -> dict:
    """The Response completed or incomplete (`length` -> max_output_tokens)."""
    reason = incomplete_reason(finish)
    response = {**response, "usage": usage}
    if reason is None:
        response.update(status="completed", incomplete_details=None)
    else:
        response.update(status="incomplete", incomplete_details={"reason": reason})
    return response


@upstream_shape
def to_response(answer: dict, body: dict, response_id: str, prompt_estimate: int) -> dict:
    """A canonical chat completion as a Response object."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    finish = choice.get("finish_reason")
    status = "completed" if incomplete_reason(finish) is None else "incomplete"
    output: list[dict] = []
    text = message.get("content")
    text = content_text(text) if not isinstance(text, str) else text
    if text:
        output.append(message_item(text, status))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        output.append(refusal_item(refusal, status))
    spoken = [text or "", refusal if isinstance(refusal, str) else ""]
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        spoken.append(arguments)
        call_id = call.get("id") or new_id("call")
        output.append(call_item(call_id, str(function.get("name") or ""), arguments, status))
    usage = response_usage(answer.get("usage"), prompt_estimate, "".join(spoken))
    response = skeleton(body, response_id, body.get("model") or answer.get("model") or "")
    response["output"] = output
    return finished(response, finish, usage)


def output_text(response: dict) -> str:
    """The text of a Response's output messages (what the SDK's `output_text` gives)."""
    texts = []
    for item in response.get("output") or ():
        if isinstance(item, dict) and item.get("type") == "message":
            texts.append(content_text(item.get("content"), sep="", kind="output_text"))
    return "".join(texts)
