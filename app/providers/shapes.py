"""Translation pieces several adapters share: OpenAI function tools, read and narrowed."""

from __future__ import annotations

from collections.abc import Iterator

from app.errors import InvalidRequestError


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
