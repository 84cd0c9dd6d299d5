"""OpenAI chat requests as Gemini `GenerateContentRequest`s (the request half of the adapter)."""

from __future__ import annotations

import base64
import json
import mimetypes
import re
from urllib.parse import unquote_to_bytes, urlsplit

from ..content import content_text
from ..errors import UpstreamClientError, client_shape
from ..providers.shapes import arguments_object

DEFAULT_IMAGE_TYPE = "image/jpeg"
# Gemini 3 rejects a replayed function call step whose first call carries no thought signature;
# this value is the one Google documents for history the model did not produce (or lost).
SKIP_SIGNATURE = "skip_thought_signature_validator"
TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
_DATA_URL_RE = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),(.*)$", re.DOTALL)


@client_shape
def to_gemini(body: dict) -> dict:
    """The GenerateContentRequest for a canonical chat request, minus what Gemini cannot take."""
    system, contents = _contents(body.get("messages") or [])
    request: dict = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    config = _generation_config(body)
    if config:
        request["generationConfig"] = config
    declarations = _function_declarations(body)
    if declarations:
        request["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(body)
        if tool_config:
            request["toolConfig"] = tool_config
    return request


def _contents(messages: list) -> tuple[list[dict], list[dict]]:
    """System parts and the turns; consecutive turns of one role become one, as Gemini wants."""
    system: list[dict] = []
    contents: list[dict] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the results that follow

    def add(role: str, parts: list[dict]) -> None:
        if not parts:
            return
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})

    for position, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            text = content_text(content)
            if text:
                system.append({"text": text})
        elif role == "user":
            add("user", _user_parts(content, position))
        elif role == "assistant":
            add("model", _model_parts(message, position, names))
        elif role in ("tool", "function"):
            call_id = message.get("tool_call_id")
            name = names.get(call_id) if isinstance(call_id, str) else None
            name = name or message.get("name") or "function"
            add("user", [{"functionResponse": {"name": name, "response": _tool_result(content)}}])
    return system, contents


def _user_parts(content: object, position: int) -> list[dict]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        return []
    parts = []
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        where = f"messages[{position}].content[{index}]"
        if kind == "text" and isinstance(part.get("text"), str) and part["text"]:
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if isinstance(url, str) and url:
                parts.append(_media_part(url, DEFAULT_IMAGE_TYPE, where))
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            audio = part["input_audio"]
            fmt = str(audio.get("format") or "wav")
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": audio.get("data")}})
        elif kind == "file" and isinstance(part.get("file"), dict):
            data = part["file"].get("file_data")
            if isinstance(data, str) and data:
                guessed = mimetypes.guess_type(str(part["file"].get("filename") or ""))[0]
                fallback = guessed or "application/octet-stream"
                if data.startswith("data:"):
                    parts.append(_media_part(data, fallback, where))
                else:
                    parts.append({"inlineData": {"mimeType": fallback, "data": data}})
    return parts


def _media_part(url: str, default_type: str, where: str) -> dict:
    """A data: URL becomes inline bytes; any other URL is referenced for Gemini to fetch."""
    if url.startswith("data:"):
        match = _DATA_URL_RE.match(url)
        if not match:
            raise UpstreamClientError(
                f"Invalid request: {where}: not a valid data: URL", status=400, param=where
            )
        mime, params, data = match.groups()
        if ";base64" not in params.lower():
            data = base64.b64encode(unquote_to_bytes(data)).decode()
        return {"inlineData": {"mimeType": mime or default_type, "data": data}}
    guessed = mimetypes.guess_type(urlsplit(url).path)[0]
    return {"fileData": {"mimeType": guessed or default_type, "fileUri": url}}


def _model_parts(message: dict, position: int, names: dict[str, str]) -> list[dict]:
    content = message.get("content")
    parts: list[dict] = []
    if isinstance(content, str):
        if content:
            parts.append({"text": content})
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            text = part.get("text") if part.get("type") == "text" else part.get("refusal")
            if isinstance(text, str) and text:
                parts.append({"text": text})
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        legacy = message.get("function_call")
        calls = [{"function": legacy}] if isinstance(legacy, dict) else []
    first = True
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            continue
        name = str(function["name"])
        if isinstance(call.get("id"), str):
            names[call["id"]] = name
        where = f"messages[{position}].tool_calls[{index}].function.arguments"
        part: dict = {"functionCall": {"name": name, "args": _arguments(function, where)}}
        signature = _signature(call)
        if signature or first:
            part["thoughtSignature"] = signature or SKIP_SIGNATURE
        first = False
        parts.append(part)
    return parts


def _arguments(function: dict, where: str) -> dict:
    args = arguments_object(function.get("arguments"))
    if args is None:
        raise UpstreamClientError(
            f"Invalid request: {where}: must be a JSON object", status=400, param=where
        )
    return args


def _signature(call: dict) -> str | None:
    """The thought signature this proxy (or Gemini's own OpenAI endpoint) put on a tool call."""
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _tool_result(content: object) -> dict:
    """A tool's output as Gemini's `response` object: its JSON object, else {"content": text}."""
    text = content if isinstance(content, str) else content_text(content)
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"content": text}


def _generation_config(body: dict) -> dict:
    config: dict = {}
    for source, target in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("n", "candidateCount"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
        ("seed", "seed"),
    ):
        if body.get(source) is not None:
            config[target] = body[source]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        config["stopSequences"] = [s for s in stop if isinstance(s, str)]
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if kind == "json_schema" and isinstance(schema, dict):
            # responseJsonSchema takes JSON Schema as OpenAI clients write it; responseSchema
            # takes only Google's OpenAPI subset.
            config["responseJsonSchema"] = schema
    return config


def _function_declarations(body: dict) -> list[dict]:
    functions = []
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict) and tool.get("type") == "function":
                functions.append(tool.get("function"))
    elif isinstance(body.get("functions"), list):
        functions = body["functions"]
    declarations = []
    for function in functions:
        if not isinstance(function, dict) or not function.get("name"):
            continue
        declaration = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        if isinstance(function.get("parameters"), dict):
            # JSON Schema as given (additionalProperties, $ref, anyOf ...): `parameters` would
            # take only Google's OpenAPI subset and reject much of what OpenAI clients send.
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    return declarations


def _tool_config(body: dict) -> dict | None:
    choice = body.get("tool_choice")
    if choice is None:
        choice = body.get("function_call")
        if isinstance(choice, dict) and choice.get("name"):
            choice = {"type": "function", "function": choice}
    if isinstance(choice, str) and choice in TOOL_MODES:
        return {"functionCallingConfig": {"mode": TOOL_MODES[choice]}}
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None
