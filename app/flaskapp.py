"""The Flask class `create_app` serves the proxy with: Flask minus per-request work it repeats.

Flask asks, for every hook, view and error handler of every request, whether the function is a
coroutine function (`ensure_sync` → `inspect.iscoroutinefunction`, which unwraps partials and
reads code flags): a request of the proxy runs five of them. For a plain function (or a partial
of one) with nothing set on it, the answer is decided by its code object alone, so it is
remembered per code object: a closure made anew for each request (an `after_this_request` hook)
is answered from the first one's code, and nothing of the closure is kept. At most
`MAX_REMEMBERED` code objects are kept; anything else (bound methods, callables, functions
carrying attributes such as a coroutine marker) gets Flask's own answer every time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from types import FunctionType

from flask import Flask

from .fastresponse import ProxyResponse

MAX_REMEMBERED = 1024


class ProxyFlask(Flask):
    """Flask with `ensure_sync` remembered for plain functions, answering with ProxyResponse."""

    response_class = ProxyResponse

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._plain_codes: set = set()  # code objects of plain, non-async functions

    def ensure_sync(self, func: Callable) -> Callable:
        target = func.func if type(func) is partial else func
        if type(target) is not FunctionType or target.__dict__:
            return super().ensure_sync(func)
        code = target.__code__
        if code in self._plain_codes:
            return func
        answer = super().ensure_sync(func)
        if answer is func and len(self._plain_codes) < MAX_REMEMBERED:
            self._plain_codes.add(code)
        return answer
