"""The Flask class `create_app` serves the proxy with: Flask minus per-request work it repeats.

Flask asks, for every hook, view and error handler of every request, whether the function is a
coroutine function (`ensure_sync` → `inspect.iscoroutinefunction`, which unwraps partials and
reads code flags): a request of the proxy runs five of them. The answer never changes for a
plain function, so it is remembered per function. Only plain, non-async functions are
remembered (bound methods would keep their instances alive, and async ones keep Flask's own
wrapping), and at most `MAX_REMEMBERED` of them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import FunctionType

from flask import Flask

from .fastresponse import ProxyResponse

MAX_REMEMBERED = 1024


class ProxyFlask(Flask):
    """Flask with `ensure_sync` remembered for plain functions, answering with ProxyResponse."""

    response_class = ProxyResponse

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._plain_sync: set[Callable] = set()

    def ensure_sync(self, func: Callable) -> Callable:
        if func in self._plain_sync:
            return func
        answer = super().ensure_sync(func)
        if answer is func and type(func) is FunctionType and len(self._plain_sync) < MAX_REMEMBERED:
            self._plain_sync.add(func)
        return answer
