"""Model ids a client chose through a wildcard: checked once, and encoded where they enter a URL.

A wildcard deployment (`cloudflare/@cf/meta/*`) sends upstream whatever follows its prefix. Where
the provider puts that id into the URL path, a hostile id could leave the deployment's path with
the operator's key (`..`, `%2e%2e`, `?`, `#`, extra `/`). Every such id is refused here, at
resolution and again when a URL is built, and what passes is percent-encoded as path segments.
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum
from urllib.parse import quote, unquote

from .errors import InvalidRequestError

MAX_MODEL_ID_LENGTH = 256
# Characters a model id may hold inside a URL path: letters, digits and a few marks that model
# ids use (`@cf/meta/llama-3.1-8b-instruct`, `gemini-2.0-flash-001`, `org/name:tag`).
_PATH_ID_RE = re.compile(r"^[A-Za-z0-9._~:@+!,=-]+(?:/[A-Za-z0-9._~:@+!,=-]+)*$")
_FORBIDDEN = frozenset("?#%\\")


class IdForm(StrEnum):
    """Where a provider puts the upstream model id."""

    BODY = "body"  # only in the JSON body (OpenAI-compatible, Anthropic, Cohere, GigaChat)
    SEGMENT = "segment"  # one URL path segment (an Azure deployment name)
    SEGMENTS = "segments"  # path segments joined by `/` (Cloudflare's `@cf/org/name`)


def _refuse(model_id: str, why: str) -> InvalidRequestError:
    shown = model_id.encode("ascii", "backslashreplace").decode("ascii")[:100]
    return InvalidRequestError(f"The model id {shown!r} is not valid: {why}.", param="model")


def normalised(model_id: str) -> str:
    """The id as an upstream might read it: NFKC look-alikes folded, percent-escapes decoded,
    backslashes as slashes, dot segments and empty segments resolved.

    Used to check the token's allow-list on what the id would mean, not only on how it is spelt.
    """
    text = unicodedata.normalize("NFKC", model_id)
    for _ in range(3):  # double-encoded `%252e` decodes twice
        decoded = unquote(text)
        if decoded == text:
            break
        text = unicodedata.normalize("NFKC", decoded)
    text = text.replace("\\", "/")
    segments: list[str] = []
    for segment in text.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/".join(segments)


def check_model_id(model_id: str, form: IdForm = IdForm.BODY) -> str:
    """`model_id` unchanged if it is safe to send upstream in `form`; else a 400 naming `model`.

    Refused everywhere: empty ids, control characters and whitespace, characters that change
    under NFKC (full-width dots and slashes), `?`, `#`, `%`, backslashes, a leading `/`, empty
    segments and `.` / `..` segments. In a URL path only printable ASCII id characters pass.
    """
    if not model_id:
        raise _refuse(model_id, "it is empty")
    if len(model_id) > MAX_MODEL_ID_LENGTH:
        raise _refuse(model_id, f"it is longer than {MAX_MODEL_ID_LENGTH} characters")
    if any(ch.isspace() or unicodedata.category(ch)[0] in "CZ" for ch in model_id):
        raise _refuse(model_id, "it holds whitespace or control characters")
    if unicodedata.normalize("NFKC", model_id) != model_id:
        raise _refuse(model_id, "it holds look-alike characters")
    if _FORBIDDEN.intersection(model_id):
        raise _refuse(model_id, "'?', '#', '%' and '\\' are not allowed")
    if "*" in model_id:
        # `openrouter/*` names a wildcard deployment; asked for itself it would send `*` up.
        raise _refuse(model_id, "'*' makes it a pattern, not a model")
    if any(segment in ("", ".", "..") for segment in model_id.split("/")):
        raise _refuse(model_id, "it has an empty, '.' or '..' segment")
    if form is IdForm.SEGMENT and "/" in model_id:
        raise _refuse(model_id, "'/' is not allowed")
    if form is not IdForm.BODY and not _PATH_ID_RE.match(model_id):
        raise _refuse(model_id, "it holds characters a model id in a URL may not have")
    return model_id


def path_part(model_id: str, form: IdForm) -> str:
    """The checked id percent-encoded for a URL path: one segment, or segments joined by `/`."""
    check_model_id(model_id, form)
    return quote(model_id, safe="/@" if form is IdForm.SEGMENTS else "@")
