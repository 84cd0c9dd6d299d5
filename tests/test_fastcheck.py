"""The chat body fast path (app/fastcheck.py) accepts only what the full schema accepts, and every
body it declines gets the schema's own error."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InvalidRequestError
from app.schemas import CHAT_COMPLETION, FAST_CHECKS, validate_body

FAST = FAST_CHECKS[id(CHAT_COMPLETION)]

# Values of every kind a JSON body can hold, with the edges of each field's range.
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=300),
    st.sampled_from([0, 1, 2, 128, 129, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 2.0, 2.0000001, -0.0, 1e308]),
    st.text(max_size=5),
    st.sampled_from(["", "x" * 256, "x" * 257, "none", "auto", "required", "user", "function"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["role", "content", "tool_calls", "function", "name", "type", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "bogus", None, 1])},
    optional={
        "content": st.one_of(st.text(max_size=5), st.none(), st.lists(JSON, max_size=2), JSON),
        "tool_calls": JSON,
        "name": JSON,
    },
)
FIELDS = [*sorted(CHAT_COMPLETION.load_fields), "user", "metadata", "seed"]
BODY = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(JSON, st.lists(MESSAGE, min_size=0, max_size=3)),
    max_size=8,
)


def test_every_declared_field_has_a_check_and_no_renamed_key():
    # A field the fast path does not know would still be safe (the body goes to the schema),
    # but it would fall off the fast path: this says so when the schema grows.
    assert not FAST.unchecked
    assert all(field.data_key is None for field in CHAT_COMPLETION.load_fields.values())


# `AI_PROXY_FUZZ_EXAMPLES=2000` (say) for a longer run, as in the other property files.
EXAMPLES = int(os.environ.get("AI_PROXY_FUZZ_EXAMPLES") or 200)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BODY)
def test_fast_accept_means_the_schema_accepts(body):
    if FAST.ok(body):
        assert CHAT_COMPLETION.validate(body) == {}


TYPICAL = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"stream": False, "max_tokens": 16, "temperature": 0.7, "top_p": 1, "n": 1},
        {"stream": True, "stream_options": {"include_usage": True}, "user": "u", "seed": 3},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
        {"tool_choice": {"type": "function", "function": {"name": "f"}}, "model": None},
        {"max_completion_tokens": 10**30, "temperature": 2, "top_p": 0.0},
    ],
)
def test_typical_bodies_take_the_fast_path(extra):
    body = {**TYPICAL, **extra}
    assert FAST.ok(body)
    assert CHAT_COMPLETION.validate(body) == {}


@pytest.mark.parametrize(
    "extra",
    [
        {"max_tokens": True},
        {"max_tokens": 0},
        {"max_tokens": 1.0},
        {"n": 129},
        {"n": False},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"temperature": True},
        {"temperature": "1"},
        {"temperature": 10**400},
        {"top_p": 1.0000001},
        {"model": ""},
        {"model": "m" * 257},
        {"model": 5},
        {"stream": "false"},
        {"stream": 0},
        {"stream_options": {"include_usage": "yes"}},
        {"stream_options": []},
        {"tools": {}},
        {"tools": [{"function": {}}]},
        {"tool_choice": "sometimes"},
        {"tool_choice": ["auto"]},
        {"messages": []},
        {"messages": None},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"content": "x"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "tool_calls": [{}]}]},
        {"messages": "hi"},
    ],
)
def test_bad_bodies_get_the_schemas_error(extra):
    body = {**TYPICAL, **extra}
    assert not FAST.ok(body)
    errors = CHAT_COMPLETION.validate(body)
    assert errors
    with pytest.raises(InvalidRequestError) as caught:
        validate_body(CHAT_COMPLETION, body)
    param = next(iter(errors))
    assert caught.value.param.startswith(param)


def test_a_missing_messages_field_gets_the_schemas_error():
    body = {"model": "m"}
    assert not FAST.ok(body)
    with pytest.raises(InvalidRequestError) as caught:
        validate_body(CHAT_COMPLETION, body)
    assert caught.value.param == "messages"
