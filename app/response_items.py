"""The input items of a stored response, listed as OpenAI lists them
(`GET /v1/responses/<id>/input_items`): pages of `limit` items in `order`, after a cursor.

Items are kept as the client sent them (a message may be a bare `{"role", "content"}` with a
string); here each gets the shape OpenAI's list has (`type`, content parts, `status`) and an id
that stays the same for the stored response, so `after` pages through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from .errors import InvalidRequestError

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_CURSOR = 256
# What `include` may ask for (OpenAI's ResponseIncludable); items are listed as stored, so none
# of them changes the answer.
INCLUDABLE = frozenset(
    (
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
    )
)


class Order(StrEnum):
    ASC = "asc"
    DESC = "desc"


@dataclass(frozen=True)
class Page:
    """Which items a list request wants."""

    limit: int = DEFAULT_LIMIT
    order: Order = Order.DESC
    after: str | None = None


def _invalid(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid request: {param}: {message}", param=param)


def read_page(args: Mapping[str, str], includes: list[str]) -> Page:
    """The query's `limit`, `order`, `after` and `include`, checked (400 naming the field)."""
    raw_limit = args.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        text = raw_limit.strip()
        if not (text.isascii() and text.isdigit() and len(text) <= 4):
            raise _invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}")
        limit = int(text)
        if not 1 <= limit <= MAX_LIMIT:
            raise _invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    raw_order = args.get("order", Order.DESC.value)
    if raw_order not in (Order.ASC.value, Order.DESC.value):
        raise _invalid("order", "must be asc or desc")
    after = args.get("after")
    if after is not None and not 0 < len(after) <= MAX_CURSOR:
        raise _invalid("after", f"must be an item id of 1 to {MAX_CURSOR} characters")
    for value in includes:
        if value not in INCLUDABLE:
            raise _invalid("include", f"must be among {', '.join(sorted(INCLUDABLE))}")
    return Page(limit, Order(raw_order), after)


def _derived_id(response_id: str, index: int) -> str:
    digest = hashlib.sha256(f"{response_id}:{index}".encode()).hexdigest()[:32]
    return f"item_{digest}"


def _listed(item: dict, item_id: str) -> dict:
    """An input item in the list's shape, with its id."""
    shaped = {**item, "id": item_id}
    if shaped.get("type") is None and "role" in shaped:
        shaped["type"] = "message"
    if shaped.get("type") == "message":
        content = shaped.get("content")
        if isinstance(content, str):
            kind = "output_text" if shaped.get("role") == "assistant" else "input_text"
            part: dict = {"type": kind, "text": content}
            if kind == "output_text":
                part["annotations"] = []
            shaped["content"] = [part]
        shaped.setdefault("status", "completed")
    elif shaped.get("type") in ("function_call", "function_call_output"):
        shaped.setdefault("status", "completed")
    return shaped


def listed_items(response_id: str, items: list[dict]) -> list[dict]:
    """The stored input items, in the order they were given, each with an id unique among
    them: its own where it has one not seen before, else one derived from the response."""
    seen: set[str] = set()
    listed = []
    for index, item in enumerate(items):
        own = item.get("id")
        item_id = own if isinstance(own, str) and own and own not in seen else None
        if item_id is None:
            item_id = _derived_id(response_id, index)
            while item_id in seen:
                item_id += "_"
        seen.add(item_id)
        listed.append(_listed(item, item_id))
    return listed


def list_page(response_id: str, items: list[dict], page: Page) -> dict:
    """One page of a stored response's input items, in OpenAI's list shape; an `after` that is
    none of them is a 400."""
    ordered = listed_items(response_id, items)
    if page.order is Order.DESC:
        ordered.reverse()
    start = 0
    if page.after is not None:
        ids = [item["id"] for item in ordered]
        if page.after not in ids:
            raise _invalid("after", "is not the id of an input item of this response")
        start = ids.index(page.after) + 1
    data = ordered[start : start + page.limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": start + page.limit < len(ordered),
    }
