"""The gunicorn worker: gthread, with the errors gunicorn writes itself in the proxy's JSON shape.

gunicorn answers a request it cannot parse (a request line over `limit_request_line`, a header
over `limit_request_field_size`, too many headers, a malformed header) before the app sees it,
with an HTML page. Its `Worker.handle_error` picks the status; the page is written by
`gunicorn.util.write_error`, which this worker replaces, in its own process, with a JSON writer.
tests/test_worker.py fails if gunicorn stops calling it.
"""

from __future__ import annotations

import json
import logging
import uuid

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from .threads import ElasticThreadPool, limit_arenas

# gunicorn's own warning quotes the offending request text, which may hold a client's token.
_GUNICORN_WARNING = "Invalid request from ip="
_MESSAGES = {
    400: "The request is not valid HTTP.",
    403: "The request is forbidden.",
    414: "The request line is too long.",
    417: "The Expect header is not supported.",
    431: "The request headers are too large or too many.",
    501: "The request's transfer coding is not supported.",
}


def error_body(status: int, reason: str) -> bytes:
    """The OpenAI error shape every other error of the proxy has."""
    if status == 500:
        # As the app answers its own unexpected errors (app.errors.ProxyError).
        error = {
            "message": "The proxy failed to handle the request.",
            "type": "api_error",
            "param": None,
            "code": "internal_error",
        }
    else:
        # 501 is here too: a transfer coding the client chose.
        error = {
            "message": _MESSAGES.get(status, f"{reason or 'The request was refused'}."),
            "type": "invalid_request_error",
            "param": None,
            "code": "_".join(reason.lower().split()) or None,
        }
    return json.dumps({"error": error}).encode()


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for gunicorn.util.write_error; `mesg` (request text) is not echoed."""
    body = error_body(status_int, reason)
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "Cache-Control: no-store\r\n"
        # Every response carries one, these too (the request's own is not trusted unparsed).
        f"x-request-id: {uuid.uuid4().hex}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class _QuoteFilter(logging.Filter):
    """Replaces gunicorn's warning about a bad request with one that quotes none of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(_GUNICORN_WARNING):
            address = message[len(_GUNICORN_WARNING) :].split(": ", 1)[0]
            record.msg, record.args = "invalid HTTP request from %s refused", (address,)
        return True


class ProxyWorker(ThreadWorker):
    """gunicorn's gthread worker with JSON for the errors gunicorn answers itself."""

    def init_process(self) -> None:
        util.write_error = write_json_error
        logging.getLogger("gunicorn.error").addFilter(_QuoteFilter())
        limit_arenas()
        super().init_process()

    def get_thread_pool(self) -> ElasticThreadPool:
        # Threads beyond the load's need end once idle: memory returns after a burst.
        return ElasticThreadPool(self.cfg.threads)
