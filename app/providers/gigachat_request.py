"""OpenAI chat requests as GigaChat's: tools become its `functions`, results `function` messages."""

from __future__ import annotations

import json

from ..content import content_text
from ..providers.shapes import arguments_object, declaration

# OpenAI request fields GigaChat takes as they are.
PASSED_FIELDS = (
    "temperature",
    "top_p",
    "n",
    "max_tokens",
    "repetition_penalty",
    "update_interval",
    "profanity_check",
    "flags",
)
REASONING_EFFORTS = ("low", "medium", "high")


def to_gigachat(body: dict, stream: bool) -> dict:
    """The GigaChat request for a canonical one; fields it has no use for are dropped."""
    payload: dict = {"model": body.get("model"), "messages": to_messages(body.get("messages"))}
    for field in PASSED_FIELDS:
        if body.get(field) is not None:
            payload[field] = body[field]
    if "max_tokens" not in payload and body.get("max_completion_tokens") is not None:
        payload["max_tokens"] = body["max_completion_tokens"]
    if body.get("reasoning_effort") in REASONING_EFFORTS:
        payload["reasoning_effort"] = body["reasoning_effort"]
    response_format = _response_format(body.get("response_format"))
    if response_format:
        payload["response_format"] = response_format
    functions = _functions(body)
    if functions:
        payload["functions"] = functions
        choice = _function_call(body, functions)
        if choice is not None:
            payload["function_call"] = choice
    if stream:
        payload["stream"] = True
    return payload


def to_messages(messages: object) -> list[dict]:
    """OpenAI messages as GigaChat's: one function call per assistant message, results after.

    OpenAI lets an assistant message carry several tool calls followed by their results;
    GigaChat takes one `function_call` per assistant message, so each further call becomes its
    own assistant message placed just before its result.
    """
    out: list[dict] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    pending: dict[str, dict] = {}  # tool_call_id -> assistant message not yet sent
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in ("system", "developer"):
            out.append({"role": "system", "content": content_text(message.get("content"))})
        elif role == "user":
            out.append({"role": "user", "content": content_text(message.get("content"))})
        elif role == "assistant":
            out.extend(_assistant_messages(message, names, pending))
        elif role in ("tool", "function"):
            call_id = message.get("tool_call_id")
            if call_id in pending:
                out.append(pending.pop(call_id))
            result = {"role": "function", "content": _function_result(message.get("content"))}
            name = message.get("name") or names.get(call_id)
            if name:
                result["name"] = name
            out.append(result)
    return out


def _assistant_messages(message: dict, names: dict, pending: dict) -> list[dict]:
    text = content_text(message.get("content"))
    calls = [
        call
        for call in message.get("tool_calls") or ()
        if isinstance(call, dict) and isinstance(call.get("function"), dict)
    ]
    legacy = message.get("function_call")
    if not calls and isinstance(legacy, dict) and legacy.get("name"):
        calls = [{"function": legacy}]
    if not calls:
        return [{"role": "assistant", "content": text}]
    first = None
    for index, call in enumerate(calls):
        function = call["function"]
        entry = {
            "role": "assistant",
            "content": text if index == 0 else "",
            "function_call": {
                "name": function.get("name"),
                "arguments": _arguments_object(function.get("arguments")),
            },
        }
        call_id = call.get("id")
        if call_id:
            names[call_id] = function.get("name")
        if index == 0:
            first = entry
        elif call_id:
            pending[call_id] = entry
    return [first]


def _arguments_object(arguments: object) -> dict:
    """OpenAI's JSON-string arguments as the object GigaChat wants; unreadable ones are empty."""
    return arguments_object(arguments) or {}


def _function_result(content: object) -> str:
    """A tool result as the JSON object string GigaChat requires in `function` messages."""
    text = content_text(content)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    if isinstance(parsed, dict):
        return text
    return json.dumps({"result": parsed}, ensure_ascii=False)


def _functions(body: dict) -> list[dict]:
    functions = []
    for tool in body.get("tools") or ():
        if isinstance(tool, dict) and tool.get("type", "function") == "function":
            function = tool.get("function")
            if isinstance(function, dict) and function.get("name"):
                functions.append(_function(function))
    for function in body.get("functions") or ():  # OpenAI's deprecated form
        if isinstance(function, dict) and function.get("name"):
            functions.append(_function(function))
    return functions


def _function(function: dict) -> dict:
    return declaration(function)


def _function_call(body: dict, functions: list[dict]) -> object:
    """`tool_choice` (or the deprecated `function_call`) as GigaChat's `function_call`."""
    choice = body.get("tool_choice", body.get("function_call"))
    if choice in ("auto", "none"):
        return choice
    if choice == "required":
        # GigaChat cannot force "some" function; with only one, forcing it is the same thing.
        return {"name": functions[0]["name"]} if len(functions) == 1 else "auto"
    if isinstance(choice, dict):
        function = choice.get("function") if isinstance(choice.get("function"), dict) else choice
        if function.get("name"):
            return {"name": function["name"]}
    return None


def _response_format(value: object) -> dict | None:
    """OpenAI's `json_schema` response format in GigaChat's shape; other formats are dropped."""
    if not isinstance(value, dict) or value.get("type") != "json_schema":
        return None
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        return None
    result = {"type": "json_schema", "schema": spec["schema"]}
    if isinstance(spec.get("strict"), bool):
        result["strict"] = spec["strict"]
    return result
