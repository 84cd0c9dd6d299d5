"""ProxyFlask remembers `ensure_sync` for plain functions only, and answers as Flask does."""

from __future__ import annotations

import pytest
from flask import Flask

from app.flaskapp import MAX_REMEMBERED, ProxyFlask


def plain():
    return "plain"


async def coroutine():
    return "async"


class Holder:
    def method(self):
        return "method"


def test_plain_functions_are_remembered_and_returned_as_they_are():
    app = ProxyFlask(__name__)
    assert app.ensure_sync(plain) is plain
    assert plain in app._plain_sync
    assert app.ensure_sync(plain) is plain


def test_bound_methods_are_answered_but_not_kept():
    app = ProxyFlask(__name__)
    method = Holder().method
    assert app.ensure_sync(method) == method
    assert not app._plain_sync


def test_async_functions_get_what_flask_gives_them():
    ours, theirs = ProxyFlask(__name__), Flask(__name__)
    try:
        expected = theirs.ensure_sync(coroutine)
    except RuntimeError as err:  # asgiref not installed: the same refusal
        with pytest.raises(RuntimeError, match=str(err)[:30]):
            ours.ensure_sync(coroutine)
        return
    assert ours.ensure_sync(coroutine) is not coroutine
    assert type(ours.ensure_sync(coroutine)) is type(expected)
    assert coroutine not in ours._plain_sync


def test_remembered_functions_are_bounded():
    app = ProxyFlask(__name__)
    for i in range(MAX_REMEMBERED + 10):
        namespace: dict = {}
        exec(f"def f{i}():\n    return {i}", namespace)
        function = namespace[f"f{i}"]
        assert app.ensure_sync(function) is function
    assert len(app._plain_sync) == MAX_REMEMBERED


def test_the_proxy_app_is_one():
    from app import create_app

    assert isinstance(create_app({"env": {}}), ProxyFlask)
