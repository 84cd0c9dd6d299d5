"""The models a client token may use, for the model lists of every surface (OpenAI's list and
Gemini's), and the Gemini shapes of those lists.

The google-genai SDK asks `GET /v1/models` (its default API version) on the same path as
OpenAI's list: a request from that SDK gets the Gemini shape there too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..auth import model_allowed
from ..config import TokenConfig
from ..errors import InvalidRequestError, ModelNotFoundError
from .common import authorise_model, proxy_state

GLOB_CHARS = "*?["
GEMINI_METHODS = ("generateContent", "streamGenerateContent", "countTokens")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Listed:
    """A model a token may use: its public id, who serves it, and its context window if known."""

    id: str
    owned_by: str
    context_window: int | None = None


def usable_models(token: TokenConfig) -> list[Listed]:
    """Every name, alias and category the token may use, and the ids its allow-list names that
    a wildcard deployment serves (`openrouter/deepseek/deepseek-chat` through `openrouter/*`).

    A glob in the allow-list (`openrouter/meta-llama/*`) names no model, so it adds nothing.
    """
    router = proxy_state().router
    listed: dict[str, Listed] = {}
    for model_id, owned_by, is_category in router.public_models():
        if model_allowed(token, model_id, is_category):
            listed.setdefault(model_id, Listed(model_id, owned_by, _window(model_id)))
    for pattern in token.models:
        if pattern in listed or any(ch in pattern for ch in GLOB_CHARS):
            continue
        owner = router.wildcard_owner(pattern)
        if owner is not None:
            listed[pattern] = Listed(pattern, owner)
    return list(listed.values())


def find_model(token: TokenConfig, model_id: str) -> Listed:
    """One model the token may use, or 403 (outside its allow-list) / 404 (unknown)."""
    # The allow-list first: a model outside it is refused whether or not it exists.
    authorise_model(token, model_id)
    router = proxy_state().router
    for public_id, owned_by, is_category in router.public_models():
        matches = public_id.upper() == model_id.upper() if is_category else public_id == model_id
        if matches:
            return Listed(public_id, owned_by, _window(public_id))
    owner = router.wildcard_owner(model_id)
    if owner is not None:
        return Listed(model_id, owner)
    raise ModelNotFoundError(f"The model {model_id!r} does not exist.", param="model")


def _window(model_id: str) -> int | None:
    providers = proxy_state().router.by_name.get(model_id) or ()
    windows = [p.model.context_window for p in providers if p.model.context_window]
    return min(windows) if windows else None


def wants_gemini(headers: Mapping[str, str]) -> bool:
    """Whether a model-list request comes from the google-genai SDK (Gemini CLI included),
    which names itself in `x-goog-api-client`; every other client gets OpenAI's list there."""
    return "genai" in headers.get("x-goog-api-client", "").lower()


def generates(model: Listed) -> bool:
    """Whether a listed model can answer generateContent: a chat model (not an embedding or
    image one), and not a wildcard's pattern (`openrouter/*` names no model)."""
    if "*" in model.id:
        return False
    providers = proxy_state().router.by_name.get(model.id)
    return not providers or any(p.model.kind == "chat" for p in providers)


def gemini_model(model: Listed) -> dict:
    """A model as Gemini's `Model` resource."""
    entry: dict = {
        "name": f"models/{model.id}",
        "baseModelId": model.id,
        "version": "ai-proxy",
        "displayName": model.id,
        "description": f"{model.id}, served by ai-proxy ({model.owned_by}).",
        "supportedGenerationMethods": list(GEMINI_METHODS),
    }
    if model.context_window:
        entry["inputTokenLimit"] = model.context_window
    return entry


def gemini_model_list(models: list[Listed], args: Mapping[str, str]) -> dict:
    """Gemini's `ListModelsResponse`: a page of `pageSize` models from `pageToken` on."""
    size = _number(args.get("pageSize"), "pageSize", DEFAULT_PAGE_SIZE)
    start = _number(args.get("pageToken"), "pageToken", 0)
    size = min(max(size, 1), MAX_PAGE_SIZE)
    page: dict = {"models": [gemini_model(m) for m in models[start : start + size]]}
    if start + size < len(models):
        page["nextPageToken"] = str(start + size)
    return page


def _number(value: str | None, name: str, default: int) -> int:
    if value in (None, ""):
        return default
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        raise InvalidRequestError(f"Invalid request: {name}: must be a whole number", param=name)
    return int(value)
