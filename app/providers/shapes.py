"""Translation pieces several adapters share: OpenAI function tools, their declarations and
call arguments."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

from ..errors import InvalidRequestError


def function_tools(tools: object) -> Iterator[dict]:
    """The `function` of each OpenAI function tool that has a name; other tools are skipped."""
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        function = tool.get("function")
        if isinstance(function, dict) and function.get("name"):
            yield function


def only_named_tool(tools: list[dict], tool_choice: dict) -> list[dict]:
    """For upstreams that can require some tool but not a named one: `tools` (OpenAI-shaped,
    already translated) narrowed to the one `tool_choice` names, which the caller then requires.
    400 when that tool is not among them."""
    name = (tool_choice.get("function") or {}).get("name")
    kept = [tool for tool in tools if tool["function"]["name"] == name]
    if not kept:
        raise InvalidRequestError(
            f"tool_choice names the function {name!r}, which is not in tools.",
            param="tool_choice",
        )
    return kept


def narrowed_tools(
    tools: list[dict], tool_choice: object, choice: object, required: object
) -> tuple[list[dict], object]:
    """`(tools, choice)`, or, for a `tool_choice` naming one function, just that tool and the
    upstream's word for "required" (see `only_named_tool`)."""
    if isinstance(tool_choice, dict):
        return only_named_tool(tools, tool_choice), required
    return tools, choice


def declaration(function: dict, parameters_key: str = "parameters") -> dict:
    """A function tool as name, parameters (an empty object schema when it has none) and
    description, the shape most upstreams' function declarations share."""
    parameters = function.get("parameters")
    entry = {
        "name": function["name"],
        parameters_key: parameters
        if isinstance(parameters, dict) and parameters
        else {"type": "object", "properties": {}},
    }
    if function.get("description"):
        entry["description"] = function["description"]
    return entry


def arguments_object(raw: object) -> dict | None:
    """Tool call arguments (OpenAI's JSON string, or an object already) as an object: none or
    blank is `{}`; anything that is not a JSON object is None, for the caller to refuse."""
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    try:
        parsed = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def token_limit(body: dict) -> object:
    """The client's completion-token limit, in either of OpenAI's spellings (None: not set)."""
    return body.get("max_completion_tokens") or body.get("max_tokens")


def passed_fields(body: dict, names: Mapping[str, str]) -> dict:
    """The request fields an upstream takes with the same meaning, under its own names
    (`{"top_p": "p"}`), those that are set."""
    return {
        target: body[source] for source, target in names.items() if body.get(source) is not None
    }
