"""ProxyFlask remembers `ensure_sync` per code object of plain functions only, and answers as
Flask does."""

from __future__ import annotations

import functools

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
    assert plain.__code__ in app._plain_codes
    assert app.ensure_sync(plain) is plain


def test_closures_made_per_request_are_remembered_once_and_not_kept():
    app = ProxyFlask(__name__)

    def make(value):
        def finish(response):
            return value

        return finish

    made = [make(i) for i in range(50)]
    assert all(app.ensure_sync(f) is f for f in made)
    assert app._plain_codes == {made[0].__code__}


def test_partials_of_plain_functions_are_returned_as_they_are():
    app = ProxyFlask(__name__)
    view = functools.partial(plain)
    assert app.ensure_sync(view) is view
    assert app.ensure_sync(view) is view


def test_bound_methods_are_answered_but_not_kept():
    app = ProxyFlask(__name__)
    method = Holder().method
    assert app.ensure_sync(method) == method
    assert not app._plain_codes


def flask_answer(func):
    theirs = Flask(__name__)
    try:
        return theirs.ensure_sync(func), None
    except RuntimeError as err:  # asgiref not installed: the same refusal
        return None, err


@pytest.mark.parametrize(
    "func", [coroutine, functools.partial(coroutine)], ids=["async def", "partial"]
)
def test_async_functions_get_what_flask_gives_them(func):
    ours = ProxyFlask(__name__)
    for _ in range(2):  # asked twice: never remembered as plain
        expected, err = flask_answer(func)
        if err is not None:
            with pytest.raises(RuntimeError, match=str(err)[:30]):
                ours.ensure_sync(func)
            continue
        assert ours.ensure_sync(func) is not func
        assert type(ours.ensure_sync(func)) is type(expected)
    assert not ours._plain_codes


def test_a_function_marked_as_a_coroutine_is_not_taken_for_plain(monkeypatch):
    """A function carrying attributes (3.12's `inspect.markcoroutinefunction` sets one) is
    asked about every time, though a plain twin with the same code was remembered."""
    import flask.app

    app = ProxyFlask(__name__)

    def make():
        def view():
            return "x"

        return view

    first, marked = make(), make()
    assert app.ensure_sync(first) is first
    marked._is_coroutine_marker = True
    original = flask.app.iscoroutinefunction
    monkeypatch.setattr(flask.app, "iscoroutinefunction", lambda f: f is marked or original(f))
    try:
        answer = app.ensure_sync(marked)
    except RuntimeError:  # asgiref not installed: Flask's refusal, not the function
        return
    assert answer is not marked


def test_remembered_code_is_bounded():
    app = ProxyFlask(__name__)
    for i in range(MAX_REMEMBERED + 10):
        namespace: dict = {}
        exec(f"def f{i}():\n    return {i}", namespace)
        function = namespace[f"f{i}"]
        assert app.ensure_sync(function) is function
    assert len(app._plain_codes) == MAX_REMEMBERED


def test_the_proxy_app_is_one():
    from app import create_app

    assert isinstance(create_app({"env": {}}), ProxyFlask)
