"""The Response class of the proxy's answers: werkzeug's, minus header work it repeats.

A proxy answer carries a dozen headers (rate limits, model, attempts, cache, request id).
werkzeug adds headers given as a dict one by one (`Headers.add`: a type check and a newline
search each), and copies the whole list again the same way when the answer is sent
(`get_wsgi_headers` starts from `Headers(self.headers)`): about a sixth of a cache hit's CPU.
`ProxyResponse` checks a dict of plain strings in one pass (the same ValueError for a newline)
and copies already-checked headers as a list; anything else (lists, non-string values, a
`Location` to make absolute, a length to compute, 1xx/204/304 answers) takes werkzeug's own path,
so the headers sent are the same.
"""

from __future__ import annotations

from flask import Response
from werkzeug.datastructures import Headers

# Headers get_wsgi_headers rewrites: an answer holding one takes werkzeug's path.
_REWRITTEN = frozenset({"location", "content-location"})


def plain_headers(mapping: dict) -> Headers | dict:
    """A dict of str names to str values as Headers, checked as `Headers.add` checks each value
    (no CR or LF); any other dict is returned as it is, for werkzeug to read."""
    values = mapping.values()
    for value in values:
        if type(value) is not str:
            return mapping
    joined = "".join(values)
    if "\n" in joined or "\r" in joined:
        return mapping  # werkzeug raises its own ValueError for it
    headers = Headers()
    headers._list = list(mapping.items())
    return headers


class ProxyResponse(Response):
    """flask.Response with the header fast paths of the module docstring."""

    def __init__(self, response=None, status=None, headers=None, *args, **kwargs) -> None:
        if type(headers) is dict and headers:
            headers = plain_headers(headers)
        super().__init__(response, status, headers, *args, **kwargs)

    def get_wsgi_headers(self, environ: dict) -> Headers:
        headers = self.headers
        status = self.status_code
        if type(headers) is not Headers or not 200 <= status < 300 or status == 204:
            return super().get_wsgi_headers(environ)
        sized = False
        for name, _value in headers._list:
            lower = name.lower()
            if lower in _REWRITTEN:
                return super().get_wsgi_headers(environ)
            if lower == "content-length":
                sized = True
        if not sized and self.automatically_set_content_length and self.is_sequence:
            return super().get_wsgi_headers(environ)  # werkzeug works the length out
        copy = Headers()
        copy._list = list(headers._list)  # checked as they were added: copied, not re-added
        return copy
