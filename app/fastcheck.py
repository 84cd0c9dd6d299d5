"""A precompiled check that a chat completions body is plainly valid, before marshmallow.

marshmallow's `Schema.validate` costs more per request than the rest of a body's handling: it
builds a result dict, looks each field up through several layers and calls validators by
reflection. Almost every body is ordinary, so `chat_body_ok` answers "valid" for the common
shapes with plain type and range tests, and answers "not sure" (False) for anything else. Only
"valid" skips the schema; "not sure" runs the full schema, so every error a client sees is still
the schema's own, word for word. A body `chat_body_ok` accepts is one the schema accepts
(tests/test_fastcheck.py checks that over generated bodies), never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable

from marshmallow import ValidationError

# A field's check answers True only when the schema's field would accept the value.
FieldCheck = Callable[[object], bool]


def _optional_text(longest: int) -> FieldCheck:
    """fields.String(allow_none=True) with Length(min=1, max=longest)."""

    def check(value: object) -> bool:
        return value is None or (type(value) is str and 1 <= len(value) <= longest)

    return check


def _optional_bool(value: object) -> bool:
    return value is None or type(value) is bool


def _int_range(low: int, high: int | None) -> FieldCheck:
    """fields.Integer(strict=True, allow_none=True) with Range(min=low, max=high)."""

    def check(value: object) -> bool:
        # `type(...) is int`: booleans and int subclasses are left to the schema.
        if value is None:
            return True
        if type(value) is not int or value < low:
            return False
        return high is None or value <= high

    return check


def _number_range(low: float, high: float) -> FieldCheck:
    """StrictNumber(allow_none=True) with Range(min=low, max=high): NaN fails the comparison
    and goes to the schema, as do infinities (outside every range here) and huge integers."""

    def check(value: object) -> bool:
        if value is None:
            return True
        kind = type(value)
        return (kind is int or kind is float) and low <= value <= high

    return check


def _raises_nothing(validator: Callable[[object], None], nullable: bool) -> FieldCheck:
    """A schema's own validator function, run as a yes/no test."""

    def check(value: object) -> bool:
        if value is None:
            return nullable
        try:
            validator(value)
        except ValidationError:
            return False
        except Exception:  # noqa: BLE001 - whatever the schema would make of it, it decides.
            return False
        return True

    return check


def _stream_options(value: object) -> bool:
    # A nested schema (unknown fields included) whose one field is a nullable strict boolean.
    return value is None or (type(value) is dict and _optional_bool(value.get("include_usage")))


def chat_checks(
    messages: Callable[[object], None],
    tools: Callable[[object], None],
    tool_choice: Callable[[object], None],
    max_model_name: int,
) -> dict[str, FieldCheck]:
    """The per-field checks of ChatCompletionSchema, given its validator functions."""
    return {
        "model": _optional_text(max_model_name),
        "messages": _raises_nothing(messages, nullable=False),
        "stream": _optional_bool,
        "stream_options": _stream_options,
        "tools": _raises_nothing(tools, nullable=True),
        "tool_choice": _raises_nothing(tool_choice, nullable=True),
        "max_tokens": _int_range(1, None),
        "max_completion_tokens": _int_range(1, None),
        "n": _int_range(1, 128),
        "temperature": _number_range(0, 2),
        "top_p": _number_range(0, 1),
    }


class FastCheck:
    """`ok(body)`: True only if `schema.validate(body)` would find nothing wrong.

    `declared` is every field the schema loads: a declared field without a check here (one added
    to the schema later) sends every body naming it to the schema. Fields the schema does not
    declare pass through untouched (`unknown = INCLUDE`), so they need no check.
    """

    def __init__(self, declared: set[str], checks: dict[str, FieldCheck], required: set[str]):
        self.checks = dict(checks)
        self.unchecked = frozenset(declared - set(checks))
        self.required = tuple(required)

    def ok(self, body: dict) -> bool:
        if type(body) is not dict:
            return False
        for name in self.required:
            if name not in body:
                return False
        checks, unchecked = self.checks, self.unchecked
        for key, value in body.items():
            check = checks.get(key)
            if check is None:
                if key in unchecked:
                    return False
                continue
            if not check(value):
                return False
        return True
