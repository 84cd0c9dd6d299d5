"""Image answers in every shape providers give them, and the shapes clients ask for."""

from __future__ import annotations

import base64
import binascii

from .errors import UpstreamError

MAX_IMAGE_BYTES = 32 * 1024 * 1024


def sniff_type(data: bytes) -> str | None:
    """The image's real media type from its first bytes (PNG, JPEG, WebP, GIF)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def decode_b64(value: str, label: str) -> bytes:
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError) as err:
        raise UpstreamError(f"{label}: the upstream image is not valid base64") from err


def entries_from_json(answer: object, label: str) -> list[dict]:
    """[{"b64_json"} | {"url"}, ...] from OpenAI's `data`, Cloudflare's `result.image` and kin."""
    if isinstance(answer, dict):
        data = answer.get("data")
        if isinstance(data, list):
            entries = []
            for item in data:
                if not isinstance(item, dict):
                    continue
                entry = {k: item[k] for k in ("b64_json", "url", "revised_prompt") if item.get(k)}
                if "b64_json" in entry or "url" in entry:
                    entries.append(entry)
            if entries:
                return entries
        result = answer.get("result")
        if isinstance(result, dict) and isinstance(result.get("image"), str):
            return [{"b64_json": result["image"]}]
        for key in ("image", "b64_json", "images"):
            value = answer.get(key)
            if isinstance(value, str):
                return [{"b64_json": value}]
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return [{"b64_json": v} for v in value]
    raise UpstreamError(f"{label}: the upstream answer holds no image")


def entry_from_bytes(data: bytes, label: str) -> dict:
    if not sniff_type(data):
        raise UpstreamError(f"{label}: the upstream answer is not an image")
    return {"b64_json": base64.b64encode(data).decode()}
