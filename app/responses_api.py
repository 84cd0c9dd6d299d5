"""The OpenAI Responses surface's requests: checked, and translated into the canonical chat form
(app/responses_output.py makes the answers back into Response objects).

A conversation is a list of Responses input items (`message`, `function_call`,
`function_call_output`); `previous_response_id` puts a stored one in front of the new input.
What the chat form cannot carry (built-in tools, `reasoning`, `include` ...) is dropped and
named in the warnings; what is not a Responses item at all is a 400 naming its field.
"""

from __future__ import annotations

from dataclasses import dataclass

from .content import content_text
from .errors import InvalidRequestError, client_shape
from .tokens import estimate_tokens

MESSAGE_ROLES = frozenset(("user", "assistant", "system", "developer"))
# Content parts the translation reads; the others OpenAI knows are dropped with a warning.
TEXT_PARTS = frozenset(("input_text", "output_text", "text", "refusal", "summary_text"))
DROPPED_PARTS = frozenset(("input_file", "input_audio", "reasoning_text"))
# Input items OpenAI knows that have no chat form: dropped with a warning, not refused.
DROPPED_ITEMS = frozenset(
    (
        "reasoning",
        "item_reference",
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "code_interpreter_call",
        "image_generation_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "mcp_list_tools",
        "mcp_approval_request",
        "mcp_approval_response",
        "mcp_call",
        "custom_tool_call",
        "custom_tool_call_output",
        "compaction",
    )
)
TOOL_CHOICES = frozenset(("none", "auto", "required"))
# Request fields the translation reads or the proxy itself answers; any other field that is set
# is dropped and named in the warnings.
HANDLED = frozenset(
    (
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "temperature",
        "top_p",
        "text",
        "parallel_tool_calls",
        "metadata",
        "stream",
        "stream_options",
        "store",
        "previous_response_id",
        "user",
        "safety_identifier",
    )
)
# Fields whose value here means "nothing asked", so leaving them out drops nothing.
NEUTRAL = {"truncation": ("disabled", "auto"), "background": (False,), "include": ([],)}


@dataclass(frozen=True)
class Translated:
    """A Responses request as chat, and what its answer's Response object echoes."""

    canonical: dict
    warnings: tuple[str, ...]
    conversation: list[dict]  # the stored conversation plus this input, as Responses items
    # Why chat cannot be asked this at all (a deployment that takes Responses as sent can):
    # raised when a translated deployment is called, not before.
    problem: InvalidRequestError | None = None

    def check(self) -> dict:
        """The chat request, or the 400 chat cannot be asked it with."""
        if self.problem is not None:
            raise self.problem
        return self.canonical


def input_items(body: dict) -> list[dict]:
    """The request's `input` as a list of items (a string is one user message)."""
    value = body.get("input")
    if value is None:
        return []
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value)


def _refuse(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid request: {param}: {message}", param=param)


def item_type(item: dict) -> str:
    """An item's type; an item with a `role` and no `type` is a message (the SDK's easy form)."""
    kind = item.get("type")
    return "message" if kind is None and "role" in item else kind


def check_items(items: list, prefix: str, history_calls: set[str]) -> None:
    """400 naming the field for anything that is not a Responses input item the proxy can read
    or knowingly drop, and for a `function_call_output` without its call earlier on."""
    calls = set(history_calls)
    for index, item in enumerate(items):
        where = f"{prefix}[{index}]"
        if not isinstance(item, dict):
            raise _refuse("every input item must be an object", where)
        kind = item_type(item)
        if kind == "message":
            _check_message(item, where)
        elif kind == "function_call":
            for field in ("call_id", "name", "arguments"):
                if not isinstance(item.get(field), str):
                    raise _refuse(f"a function_call needs a string {field}", f"{where}.{field}")
            calls.add(item["call_id"])
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise _refuse("a function_call_output needs a string call_id", f"{where}.call_id")
            if call_id not in calls:
                message = f"no function_call with call_id {call_id!r} before it"
                raise _refuse(message, f"{where}.call_id")
            output = item.get("output")
            if not isinstance(output, str):
                _check_parts(output, f"{where}.output")
        elif not isinstance(kind, str) or kind not in DROPPED_ITEMS:
            raise _refuse(f"unknown input item type {kind!r}", f"{where}.type")


def _check_message(item: dict, where: str) -> None:
    role = item.get("role")
    if not isinstance(role, str) or role not in MESSAGE_ROLES:
        raise _refuse(f"role must be one of {', '.join(sorted(MESSAGE_ROLES))}", f"{where}.role")
    content = item.get("content")
    if not isinstance(content, str):
        _check_parts(content, f"{where}.content")


def _check_parts(parts: object, where: str) -> None:
    if not isinstance(parts, list):
        raise _refuse("must be a string or a list of content parts", where)
    for index, part in enumerate(parts):
        at = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str):
            raise _refuse("every content part must be an object with a type", f"{at}.type")
        if kind in TEXT_PARTS:
            if not isinstance(part.get("text", part.get("refusal")), str):
                raise _refuse(f"a {kind} part needs a string text", f"{at}.text")
        elif kind == "input_image":
            image = part.get("image_url")
            if image is not None and not isinstance(image, str):
                raise _refuse("image_url must be a string", f"{at}.image_url")
        elif kind not in DROPPED_PARTS:
            raise _refuse(f"unknown content part type {kind!r}", f"{at}.type")


def call_ids(items: list[dict]) -> set[str]:
    """The call ids of the function calls among `items` (stored items are well formed)."""
    return {
        item["call_id"]
        for item in items
        if isinstance(item, dict) and item.get("type") == "function_call" and item.get("call_id")
    }


def _part_text(part: dict) -> str:
    text = part.get("text", part.get("refusal"))
    return text if isinstance(text, str) else ""


def _chat_parts(parts: list, warnings: list[str]) -> list[dict]:
    """Responses content parts as chat content parts (text and images)."""
    chat: list[dict] = []
    for part in parts:
        kind = part.get("type")
        if kind in TEXT_PARTS:
            chat.append({"type": "text", "text": _part_text(part)})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            chat.append({"type": "image_url", "image_url": image})
        else:
            warnings.append(f"{kind} content dropped")
    return chat


def _flat(parts: list[dict]) -> str | list[dict]:
    """Chat content: a string when it is all text (what every upstream takes), else the parts."""
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _text(content: object, warnings: list[str]) -> str:
    if isinstance(content, str):
        return content
    parts = _chat_parts(content, warnings)
    dropped = [p for p in parts if p["type"] != "text"]
    if dropped:
        warnings.append("image content dropped")
    return "\n".join(p["text"] for p in parts if p["type"] == "text")


@client_shape
def to_messages(items: list[dict], warnings: list[str]) -> list[dict]:
    """Checked Responses items as chat messages; consecutive calls share one assistant turn."""
    messages: list[dict] = []
    for item in items:
        kind = item_type(item)
        if kind == "message":
            role, content = item["role"], item.get("content")
            if role in ("system", "developer"):
                messages.append({"role": "system", "content": _text(content, warnings)})
            elif role == "assistant":
                messages.append({"role": "assistant", "content": _text(content, warnings)})
            else:
                parts = (
                    content if isinstance(content, str) else _flat(_chat_parts(content, warnings))
                )
                messages.append({"role": "user", "content": parts})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last["content"]:
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item["call_id"],
                    "content": _text(output, warnings),
                }
            )
        else:
            warnings.append(f"{kind} input item dropped")
    return messages


def _tools(body: dict, warnings: list[str]) -> list[dict]:
    tools = []
    for tool in body.get("tools") or ():
        if tool.get("type") != "function":
            warnings.append(f"{tool.get('type')} tool dropped")
            continue
        function = {"name": tool["name"]}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        parameters = tool.get("parameters")
        function["parameters"] = (
            parameters
            if isinstance(parameters, dict)
            else {
                "type": "object",
                "properties": {},
            }
        )
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(choice: object, warnings: list[str]) -> object:
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice["name"]}}
    if choice is not None:
        kind = choice.get("type") if isinstance(choice, dict) else choice
        warnings.append(f"tool_choice {kind} dropped")
    return None


def _response_format(text: object, warnings: list[str]) -> dict | None:
    if not isinstance(text, dict):
        return None
    for key in text:
        if key != "format" and text[key] is not None:
            warnings.append(f"text.{key} dropped")
    fmt = text.get("format")
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {"name": fmt.get("name") or "response", "schema": fmt.get("schema") or {}}
        for key in ("description", "strict"):
            if fmt.get(key) is not None:
                schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": schema}
    return None


def dropped_fields(body: dict) -> list[str]:
    """The request's fields a translated call leaves out, by name."""
    names = []
    for key, value in body.items():
        if key in HANDLED or value is None or value in NEUTRAL.get(key, ()):
            continue
        names.append(f"{key} dropped")
    return names


@client_shape
def to_chat_request(body: dict, history: list[dict], stream: bool = False) -> Translated:
    """A checked Responses request, after the stored conversation `history`, as chat."""
    warnings: list[str] = dropped_fields(body)
    conversation = [*history, *input_items(body)]
    messages = to_messages(conversation, warnings)
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    problem = None
    if not any(m.get("role") != "system" for m in messages):
        # Every item was one chat cannot carry (reasoning alone, say): nothing to answer.
        problem = InvalidRequestError(
            "Invalid request: input: none of its items can be sent to this model.", param="input"
        )
    request: dict = {"model": body.get("model"), "messages": messages}
    tools = _tools(body, warnings)
    choice_asked = body.get("tool_choice")
    function_asked = isinstance(choice_asked, dict) and choice_asked.get("type") == "function"
    if not tools and (function_asked or (choice_asked == "required" and not body.get("tools"))):
        # A built-in tool asked for is dropped with the tool (and named); a function tool that
        # is not there cannot be.
        problem = problem or InvalidRequestError(
            "Invalid request: tool_choice: it asks for a tool, but no function tool is given.",
            param="tool_choice",
        )
    if tools:
        request["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), warnings)
        if choice is not None:
            request["tool_choice"] = choice
        if isinstance(body.get("parallel_tool_calls"), bool):
            request["parallel_tool_calls"] = body["parallel_tool_calls"]
    if body.get("max_output_tokens") is not None:
        request["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            request[key] = body[key]
    response_format = _response_format(body.get("text"), warnings)
    if response_format is not None:
        request["response_format"] = response_format
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        request["user"] = user
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return Translated(request, tuple(dict.fromkeys(warnings)), conversation, problem)


def estimate_input(messages: list[dict]) -> int:
    """Input tokens of a translated request, estimated from its text."""
    return sum(estimate_tokens(content_text(m.get("content"))) for m in messages)


def passthrough_body(body: dict, history: list[dict]) -> dict:
    """The request for a deployment that speaks Responses itself: as the client sent it, with
    a stored conversation put in front of its input (the proxy's store keeps conversations,
    so a conversation moves between translated and passed-through deployments)."""
    sent = {key: value for key, value in body.items() if key != "previous_response_id"}
    if history:
        sent["input"] = [*filter(None, map(_upstream_item, history)), *input_items(body)]
    return sent


def _upstream_item(item: dict) -> dict | None:
    """A stored item as input to an upstream that did not store it: without the ids it gave
    its output (they name nothing there); reasoning only where it carries itself."""
    if item.get("type") == "reasoning":
        return item if item.get("encrypted_content") else None
    return {key: value for key, value in item.items() if key not in ("id", "status")}
