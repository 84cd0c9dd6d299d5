"""The Gemini surface's requests: a `GenerateContentRequest` as the canonical OpenAI chat form.

Validated bodies come in (app/gemini_schemas.py checked their shapes); what the canonical form
cannot carry (built-in tools, safety settings, `topK`, thinking settings ...) is dropped and
named in the warnings; what it cannot mean (a function response no call asked for) is a 400
naming the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .errors import InvalidRequestError, client_shape
from .tokens import estimate_tokens

CALLING_MODES = {"AUTO": "auto", "VALIDATED": "auto", "ANY": "required", "NONE": "none"}
AUDIO_FORMATS = {"audio/wav": "wav", "audio/x-wav": "wav", "audio/mp3": "mp3", "audio/mpeg": "mp3"}
# generationConfig fields the canonical form takes under another name.
RENAMED = {
    "temperature": "temperature",
    "topP": "top_p",
    "maxOutputTokens": "max_tokens",
    "candidateCount": "n",
    "presencePenalty": "presence_penalty",
    "frequencyPenalty": "frequency_penalty",
    "seed": "seed",
}
# generationConfig fields with no canonical meaning the proxy can keep.
# How deep a request may nest (JSON schemas of tools included).
KNOWN_DROPPED = ("safetySettings", "cachedContent", "labels", "serviceTier")


@dataclass(frozen=True)
class Translated:
    """A Gemini request as chat, for deployments that do not speak Gemini."""

    canonical: dict
    warnings: tuple[str, ...]  # what a translated call drops, for `x-ai-proxy-warning`
    input_estimate: int  # the prompt's tokens, estimated
    max_output: int | None  # generationConfig.maxOutputTokens
    # thinkingConfig.includeThoughts: an upstream's reasoning comes back as thought parts.
    include_thoughts: bool = False


def warning_header(warnings: tuple[str, ...], limit: int = 1000) -> str:
    """The dropped fields as an `x-ai-proxy-warning` value: ASCII, no control characters."""
    text = "; ".join(warnings).encode("ascii", "backslashreplace").decode("ascii")
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)[:limit]


def _invalid(where: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid request: {where}: {message}", param=where)


@dataclass
class _Pending:
    """A function call of the last model turn, waiting for its response."""

    id: str
    name: str
    where: str  # the call's part, for an error naming it
    answered: bool = False


class _Turns:
    """Builds the canonical messages turn by turn, pairing function responses with calls."""

    def __init__(self, warnings: list[str]) -> None:
        self.messages: list[dict] = []
        self.warnings = warnings
        self.pending: list[_Pending] = []
        self.calls = 0

    def model(self, parts: list[dict], where: str) -> None:
        self._all_answered()
        texts: list[str] = []
        calls: list[dict] = []
        for index, part in enumerate(parts):
            if part.get("thought"):
                continue  # a thought summary is not part of the conversation
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif "functionCall" in part:
                call = part["functionCall"]
                call_id = call.get("id") or f"call_{self.calls}_{call['name']}"[:64]
                self.calls += 1
                arguments = json.dumps(call.get("args") or {})
                calls.append(
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": call["name"], "arguments": arguments},
                    }
                )
                self.pending.append(_Pending(call_id, call["name"], f"{where}.parts[{index}]"))
            else:
                self.warnings.append(f"{where}.parts[{index}] ({_kind(part)}) dropped")
        text = "".join(texts)
        if not (text or calls):
            return
        message: dict = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = calls
        self.messages.append(message)

    def user(self, parts: list[dict], where: str) -> None:
        content: list[dict] = []
        for index, part in enumerate(parts):
            at = f"{where}.parts[{index}]"
            if isinstance(part.get("text"), str):
                if not part.get("thought"):
                    content.append({"type": "text", "text": part["text"]})
            elif "functionResponse" in part:
                self.messages.append(self._tool_result(part["functionResponse"], at))
            elif "inlineData" in part:
                media = _inline_part(part["inlineData"])
                if media is None:
                    self.warnings.append(f"{at} ({part['inlineData']['mimeType']}) dropped")
                else:
                    content.append(media)
            elif "fileData" in part and _is_image(part["fileData"].get("mimeType")):
                url = part["fileData"]["fileUri"]
                content.append({"type": "image_url", "image_url": {"url": url}})
            else:
                self.warnings.append(f"{at} ({_kind(part)}) dropped")
        self._all_answered()
        if not content:
            return
        if all(p["type"] == "text" for p in content):
            self.messages.append({"role": "user", "content": "".join(p["text"] for p in content)})
        else:
            self.messages.append({"role": "user", "content": content})

    def _all_answered(self) -> None:
        """Every call of the last model turn has its response in the turn after it (as Gemini
        and every chat API want); then those calls are done with."""
        for call in self.pending:
            if not call.answered:
                raise _invalid(
                    f"{call.where}.functionCall",
                    f"{call.name!r} has no functionResponse in the turn after it",
                )
        self.pending = []

    def _tool_result(self, response: dict, where: str) -> dict:
        """The tool message answering a call of the last model turn (by id, else by name)."""
        wanted_id, name = response.get("id"), response["name"]
        waiting = [call for call in self.pending if not call.answered]
        by_id = [call for call in waiting if wanted_id and call.id == wanted_id]
        for call in by_id or [call for call in waiting if call.name == name]:
            call.answered = True
            return {
                "role": "tool",
                "tool_call_id": call.id,
                "content": json.dumps(response.get("response") or {}),
            }
        raise _invalid(
            f"{where}.functionResponse",
            f"no function call {name!r} in the model turn before it is waiting for a response",
        )


def _kind(part: dict) -> str:
    return next((key for key in part if key not in ("thought", "thoughtSignature")), "part")


def _is_image(mime: object) -> bool:
    return isinstance(mime, str) and mime.lower().startswith("image/")


def _inline_part(data: dict) -> dict | None:
    """Inline bytes as a canonical content part: an image, audio OpenAI takes, or a file."""
    mime, payload = data["mimeType"].lower(), data["data"]
    if _is_image(mime):
        return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{payload}"}}
    if mime in AUDIO_FORMATS:
        return {
            "type": "input_audio",
            "input_audio": {"data": payload, "format": AUDIO_FORMATS[mime]},
        }
    if mime == "application/pdf" or mime.startswith("text/"):
        return {"type": "file", "file": {"file_data": f"data:{mime};base64,{payload}"}}
    return None


def json_schema(schema: object) -> object:
    """Google's OpenAPI-subset schema (`type: "OBJECT"`, `nullable`) as JSON Schema."""
    if isinstance(schema, list):
        return [json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result: dict = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            result["type"] = value.lower()
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            result[key] = {name: json_schema(inner) for name, inner in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "not", "additionalProperties"):
            result[key] = json_schema(value)
        elif key == "propertyOrdering":
            continue  # Google's own; JSON Schema has none
        elif key != "nullable":
            result[key] = value
    if schema.get("nullable") is True and isinstance(result.get("type"), str):
        result["type"] = [result["type"], "null"]
    return result


def _generation(config: dict, request: dict, warnings: list[str]) -> None:
    for source, target in RENAMED.items():
        if config.get(source) is not None:
            request[target] = config[source]
    if config.get("stopSequences"):
        request["stop"] = list(config["stopSequences"])
    schema = config.get("responseJsonSchema") or json_schema(config.get("responseSchema"))
    if isinstance(schema, dict) and schema:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": schema},
        }
    elif config.get("responseMimeType") == "application/json":
        request["response_format"] = {"type": "json_object"}
    handled = {*RENAMED, "stopSequences", "responseJsonSchema", "responseSchema"}
    handled.update(("responseMimeType", "thinkingConfig"))
    for key, value in config.items():
        if key not in handled and value is not None:
            warnings.append(f"generationConfig.{key} dropped")
    thinking = config.get("thinkingConfig")
    for key in thinking if isinstance(thinking, dict) else ():
        if key != "includeThoughts":
            warnings.append(f"generationConfig.thinkingConfig.{key} dropped")


def _tools(body: dict, request: dict, warnings: list[str]) -> None:
    tools: list[dict] = []
    for index, tool in enumerate(body.get("tools") or []):
        for key in tool:
            if key != "functionDeclarations":
                warnings.append(f"tools[{index}].{key} dropped")
        for declaration in tool.get("functionDeclarations") or []:
            parameters = declaration.get("parametersJsonSchema") or json_schema(
                declaration.get("parameters")
            )
            function: dict = {"name": declaration["name"]}
            if declaration.get("description"):
                function["description"] = declaration["description"]
            function["parameters"] = parameters or {"type": "object", "properties": {}}
            tools.append({"type": "function", "function": function})
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    allowed = calling.get("allowedFunctionNames")
    if allowed:
        # Only the allowed functions are offered: what AUTO and ANY with names mean.
        tools = [t for t in tools if t["function"]["name"] in allowed]
    if not tools:
        return
    request["tools"] = tools
    mode = calling.get("mode")
    if mode == "ANY" and len(tools) == 1:
        request["tool_choice"] = {
            "type": "function",
            "function": {"name": tools[0]["function"]["name"]},
        }
    elif mode in CALLING_MODES:
        request["tool_choice"] = CALLING_MODES[mode]


def _camel(key: object) -> object:
    if not isinstance(key, str) or "_" not in key.strip("_"):
        return key
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def _camel_keys(value: object, nested: dict[str, object] | None = None) -> object:
    """An object with its keys in camelCase, and the values `nested` names walked the same way
    (a walker for one value, or for each item of a list)."""
    if not isinstance(value, dict):
        return value
    result: dict = {}
    for key, inner in value.items():
        name = _camel(key)
        walk = (nested or {}).get(name)
        if callable(walk):
            inner = walk(inner)
        if name not in result or name == key:
            result[name] = inner
    return result


def _each(walk):
    return lambda value: [walk(item) for item in value] if isinstance(value, list) else value


_PART_FIELDS = ("inlineData", "fileData", "functionCall", "functionResponse", "executableCode")
_PART = {name: _camel_keys for name in (*_PART_FIELDS, "codeExecutionResult", "videoMetadata")}
_CONTENT = {"parts": _each(lambda part: _camel_keys(part, _PART))}
_TOOL = {"functionDeclarations": _each(_camel_keys)}
_REQUEST = {
    "contents": _each(lambda content: _camel_keys(content, _CONTENT)),
    "systemInstruction": lambda content: _camel_keys(content, _CONTENT),
    "generationConfig": lambda config: _camel_keys(config, {"thinkingConfig": _camel_keys}),
    "tools": _each(lambda tool: _camel_keys(tool, _TOOL)),
    "toolConfig": lambda config: _camel_keys(
        config, {"functionCallingConfig": _camel_keys, "retrievalConfig": _camel_keys}
    ),
    "safetySettings": _each(_camel_keys),
}


def camel_case(body: object) -> object:
    """A Gemini request body with the snake_case field names Google's REST API also takes
    (`system_instruction`, `inline_data`, `max_output_tokens` ...) in camelCase: one spelling
    to validate, translate and pass on. Free-form values (`args`, `response`, schemas) are
    left as they are."""
    walked = {**_REQUEST, "generateContentRequest": lambda inner: _camel_keys(inner, _REQUEST)}
    return _camel_keys(body, walked)


@client_shape
def to_chat(body: dict, model: str, stream: bool = False) -> Translated:
    """The canonical chat request for a validated GenerateContentRequest (read_json_body
    has refused nesting deeper than MAX_DEPTH)."""
    warnings: list[str] = []
    turns = _Turns(warnings)
    system = body.get("systemInstruction")
    if system:
        texts = [p["text"] for p in system["parts"] if isinstance(p.get("text"), str)]
        if len(texts) < len(system["parts"]):
            warnings.append("systemInstruction parts other than text dropped")
        if texts:
            turns.messages.append({"role": "system", "content": "\n".join(texts)})
    for position, content in enumerate(body["contents"]):
        where = f"contents[{position}]"
        if content.get("role") == "model":
            turns.model(content["parts"], where)
        else:
            turns.user(content["parts"], where)
    if not any(m["role"] != "system" for m in turns.messages):
        raise _invalid("contents", "holds nothing a model can answer")
    request: dict = {"model": model, "messages": turns.messages}
    _generation(body.get("generationConfig") or {}, request, warnings)
    _tools(body, request, warnings)
    for key in KNOWN_DROPPED:
        if body.get(key):
            warnings.append(f"{key} dropped")
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    limit = request.get("max_tokens")
    thinking = (body.get("generationConfig") or {}).get("thinkingConfig")
    return Translated(
        request,
        tuple(dict.fromkeys(warnings)),
        estimate_input(body),
        limit if limit else None,
        isinstance(thinking, dict) and thinking.get("includeThoughts") is True,
    )


def _part_text(part: dict) -> str:
    if isinstance(part.get("text"), str):
        return part["text"]
    for key in ("functionCall", "functionResponse"):
        if isinstance(part.get(key), dict):
            return json.dumps(part[key])
    return ""


@client_shape
def estimate_input(body: dict) -> int:
    """Input tokens of a GenerateContentRequest (or a countTokens body), estimated from its
    text, function calls and responses, and tool declarations."""
    inner = body.get("generateContentRequest")
    if isinstance(inner, dict):
        body = inner
    texts: list[str] = []
    contents = list(body.get("contents") or [])
    if isinstance(body.get("systemInstruction"), dict):
        contents.append(body["systemInstruction"])
    for content in contents:
        texts.extend(_part_text(p) for p in content.get("parts") or [] if isinstance(p, dict))
    if body.get("tools"):
        texts.append(json.dumps(body["tools"]))
    return sum(estimate_tokens(text) for text in texts if text)
