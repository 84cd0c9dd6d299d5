"""Go ai-proxy compatibility rules: its `url` forms, the kind of model an entry serves, and
what it did with retry settings out of range."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from ..config.durations import format_duration

MODEL_KINDS = ("chat", "embedding", "image")
# Go-style `url` endpoints and the kind of model each serves; the longest suffix is tried first.
ENDPOINT_KINDS = (
    ("/chat/completions", "chat"),
    ("/images/generations", "image"),
    ("/embeddings", "embedding"),
    ("/pipeline/feature-extraction", "embedding"),
    ("/completions", "chat"),
)
# Providers with an adapter of their own (the rest speak OpenAI's API); their `url` forms differ.
NATIVE_PROVIDERS = frozenset(
    ("anthropic", "google", "gemini", "cohere", "cloudflare", "azure", "gigachat", "echo")
)
# Image-only in the Go ai-proxy: its /image handler calls them with a GET of `url?prompt=&model=`.
GO_IMAGE_PROVIDERS = frozenset(("airforce",))
# Text-to-image model families, recognised in a model id (Workers AI `@cf/...`, Together, ...).
_IMAGE_MODEL_RE = re.compile(
    r"(?<![a-z0-9])(?:flux(?![a-z])|stable-diffusion|sdxl|dall-e|gpt-image|dreamshaper"
    r"|lucid-origin|phoenix-\d|imagen-\d|text-to-image)",
    re.IGNORECASE,
)
# The last segment of an API root (`/v1`, `/v1beta`, `/openai`, ...): a `url` ending so is a root.
_API_ROOT_SEGMENT_RE = re.compile(r"^(?:v\d+(?:\.\d+)?[a-z]*\d*|openai|api|inference)$", re.I)
# Retry settings outside these ranges are brought into them with a warning (see clamp_retry).
MAX_RETRIES = 20
_GO_INT_RE = re.compile(r"^[+-]?\d+$")
# A RetryConfig: typed loosely so that this module needs nothing from the dataclasses.
R = TypeVar("R")


def url_endpoint(url: str) -> tuple[str | None, str]:
    """A `url`'s endpoint suffix (`/chat/completions`, ...) or None, and the URL without it.

    The query string, if any, is kept on the remainder so that other endpoints built from it
    carry it too.
    """
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    for suffix, _kind in ENDPOINT_KINDS:
        if path.lower().endswith(suffix):
            root = urlunsplit(parts._replace(path=path[: -len(suffix)], fragment=""))
            return suffix, root
    return None, urlunsplit(parts._replace(path=path, fragment=""))


def is_api_root(url: str) -> bool:
    """True when `url` names an API root (`https://host`, `.../v1`, `.../openai`), no endpoint."""
    path = urlsplit(url).path.strip("/")
    return not path or bool(_API_ROOT_SEGMENT_RE.match(path.rsplit("/", 1)[-1]))


def _workers_ai_model(url: str) -> str | None:
    """The model id in a Workers AI `.../ai/run/<model>` URL."""
    path = urlsplit(url).path
    marker = "/ai/run/"
    return path.split(marker, 1)[1] if marker in path else None


def infer_kind(entry: Mapping) -> str:
    """chat, embedding or image: the entry's `kind`, else as the Go proxy decided.

    The Go proxy had no `kind`: its /image handler used the entries without
    `max_request_length`, posted to their `url` as written, with a payload chosen by provider.
    So: an image-only provider (airforce); a `url` that names its endpoint
    (`/images/generations`, `/embeddings`, `/chat/completions`); a text-to-image model id
    (flux, stable-diffusion, ... : Workers AI and OpenAI-compatible hosts); a Hugging Face
    inference `url` (`.../models/<id>`) that is not a chat endpoint; and, for the other
    OpenAI-compatible providers, an entry written for the Go /image handler (a `url` that is
    not an API root, request limits, no `max_request_length`, no category) is an image model.
    Everything else is chat.
    """
    if entry.get("kind"):
        return str(entry["kind"])
    provider = str(entry.get("provider") or "openai").lower()
    url = entry.get("url") if not entry.get("base_url") else None
    name = str(entry.get("name") or "")
    if provider in GO_IMAGE_PROVIDERS:
        return "image"
    if url:
        suffix, _root = url_endpoint(url)
        if suffix and provider not in NATIVE_PROVIDERS:
            return dict(ENDPOINT_KINDS)[suffix]
    if provider in NATIVE_PROVIDERS - {"cloudflare"}:
        return "chat"
    model_id = (url and _workers_ai_model(url)) if provider == "cloudflare" else None
    model_id = model_id or entry.get("model") or name.removeprefix(provider + "/")
    if _IMAGE_MODEL_RE.search(str(model_id)):
        return "image"
    if provider == "cloudflare" or not url or is_api_root(url):
        return "chat"
    if provider == "huggingface" and "/models/" in urlsplit(url).path:
        return "image"
    # Written for the Go proxy's /image: its request limits (which it needed to pick a model),
    # but no max_request_length or category (which it needed to pick a chat model).
    go_image_entry = (
        any(entry.get(f"requests_per_{window}") for window in ("minute", "hour", "day"))
        and not entry.get("max_request_length")
        and not (entry.get("model_size") or entry.get("categories"))
    )
    return "image" if go_image_entry else "chat"


def clamp_retry(retry: R, names: Mapping[str, str] | None = None) -> tuple[R, list[str]]:
    """Bring retry settings into range, one warning line per change.

    The Go proxy took any number here; what it did with one out of range is what the clamp
    keeps: a negative count or delay meant none, every delay was capped at max_delay (so a
    base_delay above it waited max_delay), and jitter is a fraction of the delay.
    """
    names = names or {}
    warnings: list[str] = []

    def name(key: str) -> str:
        return names.get(key, f"retry.{key}")

    max_retries = retry.max_retries
    if max_retries < 0 or max_retries > MAX_RETRIES:
        clamped = min(max(max_retries, 0), MAX_RETRIES)
        warnings.append(
            f"{name('max_retries')}: {max_retries} is outside 0..{MAX_RETRIES}; using {clamped}"
        )
        max_retries = clamped
    delays = {}
    for key in ("base_delay", "max_delay"):
        value = getattr(retry, key)
        if value < 0:
            warnings.append(f"{name(key)}: {format_duration(value)} is negative; using 0s")
            value = 0.0
        delays[key] = value
    if delays["max_delay"] < delays["base_delay"]:
        top = format_duration(delays["max_delay"])
        warnings.append(
            f"{name('base_delay')}: {format_duration(delays['base_delay'])} is above "
            f"{name('max_delay')} {top}, which caps every retry's wait; using {top}"
        )
        delays["base_delay"] = delays["max_delay"]
    jitter = retry.jitter
    if not 0 <= jitter <= 1:
        clamped = min(max(jitter, 0.0), 1.0)
        warnings.append(f"{name('jitter')}: {jitter:g} is outside 0..1; using {clamped:g}")
        jitter = clamped
    clamped = replace(retry, max_retries=max_retries, jitter=jitter, **delays)
    return clamped, warnings


def go_int(text: str) -> int:
    """An integer in strconv.Atoi's form: digits with an optional sign (int() would take `1_0`)."""
    if not _GO_INT_RE.match(text):
        raise ValueError(f"must be an integer, got {text!r}")
    return int(text)


def go_jitter(text: str) -> float:
    """RETRY_JITTER's number: finite, without the `_` separators Go's ParseFloat refuses."""
    try:
        if "_" in text:
            raise ValueError
        jitter = float(text)
        if not math.isfinite(jitter):
            raise ValueError
    except ValueError:
        raise ValueError(f"must be a number from 0 to 1, got {text!r}") from None
    return jitter
