"""Refuses references to objects stored upstream (files, conversations, stored prompts, cached
contents, vector stores, containers) on every model-calling surface.

The proxy calls each provider with one shared key, so an id of an object stored at the provider
reaches whatever that key can see: objects of other tenants of the same upstream account among
them. The proxy serves no Files, Conversations, Prompts or cachedContents API, so no client
obtained such an id through it; a request naming one is a 400 naming the field, before any
upstream call, whether the chosen deployment would pass it through or translate it. Public URLs
(https images, YouTube, `gs://`) are not such references and stay allowed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .errors import InvalidRequestError

# The host of Google's Gemini API: a URL there names a Files API object under the proxy's key.
GOOGLE_API_HOST = "generativelanguage.googleapis.com"


def refused(where: str, what: str) -> InvalidRequestError:
    """The 400 for a reference to an upstream object, naming its field."""
    return InvalidRequestError(
        f"Invalid request: {where}: {what} is not supported through the proxy", param=where
    )


def is_upstream_uri(uri: object) -> bool:
    """Whether a media URI names an object stored at a provider: a resource name with no
    scheme (`files/abc`), or any URL on Google's Gemini API host."""
    if not isinstance(uri, str):
        return False
    text = uri.strip()
    if not text or text.lower().startswith("data:"):
        return False
    try:
        parts = urlsplit(text.replace("\\", "/"))
        host = (parts.hostname or "").rstrip(".")
    except ValueError:
        return True  # not a URL anyone can fetch; only a provider could make sense of it
    if not parts.scheme:
        return True
    return host == GOOGLE_API_HOST or host.endswith("." + GOOGLE_API_HOST)


def _present(value: object) -> bool:
    return value not in (None, "", [], {})


def _dicts(value: object) -> list[tuple[int, dict]]:
    return (
        [(i, v) for i, v in enumerate(value) if isinstance(v, dict)]
        if isinstance(value, list)
        else []
    )


# --- OpenAI chat -------------------------------------------------------------------------


def check_chat(body: dict) -> None:
    """Chat messages: file ids in `file` parts, Files-API image URLs, stored audio by id."""
    for i, message in _dicts(body.get("messages")):
        where = f"messages[{i}]"
        audio = message.get("audio")
        if isinstance(audio, dict) and _present(audio.get("id")):
            raise refused(f"{where}.audio.id", "a stored audio id")
        for j, part in _dicts(message.get("content")):
            at = f"{where}.content[{j}]"
            file = part.get("file")
            if isinstance(file, dict) and _present(file.get("file_id")):
                raise refused(f"{at}.file.file_id", "a file id")
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if is_upstream_uri(url):
                raise refused(f"{at}.image_url.url", "a provider's file URI")


# --- OpenAI Responses --------------------------------------------------------------------


def check_responses(body: dict) -> None:
    """A Responses request: `conversation`, `prompt`, `item_reference` items, file ids in
    content parts, and built-in tools that name stored files, vector stores or containers."""
    for field, what in (("conversation", "a conversation"), ("prompt", "a stored prompt")):
        if _present(body.get(field)):
            raise refused(field, what)
    items = body.get("input")
    for i, item in _dicts(items):
        where = f"input[{i}]"
        kind = item.get("type")
        if kind == "item_reference":
            raise refused(f"{where}.type", "item_reference")
        if kind == "function_call_output":
            _responses_parts(item.get("output"), f"{where}.output")
        else:
            _responses_parts(item.get("content"), f"{where}.content")
    for i, tool in _dicts(body.get("tools")):
        _responses_tool(tool, f"tools[{i}]")


def _responses_parts(parts: object, where: str) -> None:
    for j, part in _dicts(parts):
        at = f"{where}[{j}]"
        if _present(part.get("file_id")):
            raise refused(f"{at}.file_id", "a file id")
        for field in ("image_url", "file_url"):
            if is_upstream_uri(part.get(field)):
                raise refused(f"{at}.{field}", "a provider's file URI")


def _responses_tool(tool: dict, where: str) -> None:
    kind = tool.get("type")
    if kind == "file_search":
        raise refused(f"{where}.type", "file_search (stored vector stores)")
    container = tool.get("container")
    if isinstance(container, str) and container:
        raise refused(f"{where}.container", "a stored container")
    if isinstance(container, dict) and _present(container.get("file_ids")):
        raise refused(f"{where}.container.file_ids", "a file id")
    mask = tool.get("input_image_mask")
    if isinstance(mask, dict) and _present(mask.get("file_id")):
        raise refused(f"{where}.input_image_mask.file_id", "a file id")


# --- Anthropic Messages ------------------------------------------------------------------


def check_messages(body: dict) -> None:
    """An Anthropic request: Files API sources, container uploads, a reused container and
    custom skills (all objects of the provider's account)."""
    container = body.get("container")
    if isinstance(container, str) and container:
        raise refused("container", "a stored container")
    if isinstance(container, dict):
        if _present(container.get("id")):
            raise refused("container.id", "a stored container")
        for k, skill in _dicts(container.get("skills")):
            if skill.get("type") != "anthropic":
                raise refused(f"container.skills[{k}].skill_id", "a custom skill")
    for i, message in _dicts(body.get("messages")):
        _anthropic_blocks(message.get("content"), f"messages[{i}].content")
    _anthropic_blocks(body.get("system"), "system")


def _anthropic_blocks(blocks: object, where: str) -> None:
    for j, block in _dicts(blocks):
        at = f"{where}[{j}]"
        if block.get("type") == "container_upload" or _present(block.get("file_id")):
            raise refused(f"{at}.file_id", "a file id")
        source = block.get("source")
        if isinstance(source, dict):
            if source.get("type") == "file" or _present(source.get("file_id")):
                raise refused(f"{at}.source.file_id", "a file id")
            if is_upstream_uri(source.get("url")):
                raise refused(f"{at}.source.url", "a provider's file URI")
            _anthropic_blocks(source.get("content"), f"{at}.source.content")
        if block.get("type") == "tool_result":
            _anthropic_blocks(block.get("content"), f"{at}.content")


# --- Gemini ------------------------------------------------------------------------------


def check_gemini(body: dict, where: str = "") -> None:
    """A GenerateContentRequest (or a countTokens body around one): `cachedContent`, Files API
    `fileData.fileUri`, and the `fileSearch` tool's stored stores."""
    inner = body.get("generateContentRequest")
    if isinstance(inner, dict):
        check_gemini(inner, f"{where}generateContentRequest.")
    if _present(body.get("cachedContent")):
        raise refused(f"{where}cachedContent", "cachedContent")
    contents = [(f"{where}contents[{i}]", c) for i, c in _dicts(body.get("contents"))]
    system = body.get("systemInstruction")
    if isinstance(system, dict):
        contents.append((f"{where}systemInstruction", system))
    for at, content in contents:
        for j, part in _dicts(content.get("parts")):
            data = part.get("fileData")
            if isinstance(data, dict) and is_upstream_uri(data.get("fileUri")):
                raise refused(f"{at}.parts[{j}].fileData.fileUri", "a Files API URI")
    for i, tool in _dicts(body.get("tools")):
        if _present(tool.get("fileSearch")):
            raise refused(f"{where}tools[{i}].fileSearch", "fileSearch (stored file stores)")
