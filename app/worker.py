"""The gunicorn worker: gthread, with the errors gunicorn writes itself in the proxy's JSON shape.

gunicorn answers a request it cannot parse (a request line over `limit_request_line`, a header
over `limit_request_field_size`, too many headers, a malformed header) before the app sees it,
with an HTML page. Its `Worker.handle_error` picks the status; the page is written by
`gunicorn.util.write_error`, which this worker replaces, in its own process, with a JSON writer.
tests/test_worker.py fails if gunicorn stops calling it.

A kept-alive connection normally goes back to gunicorn's main thread after each answer: a pipe
write wakes that thread, which polls the socket again and hands the next request to a pool
thread, two thread wake-ups and a handful of system calls per request. A client on a
keep-alive connection usually sends its next request at once, so the thread that answered
waits a moment (`LINGER_SECONDS`) for it on the socket and serves it itself; only when nothing
comes, when other connections wait for a thread, or when the worker is stopping does the
connection go back to the main thread as before.

gunicorn's main thread accepts one connection each time its poller wakes for the listening
socket. Under a burst of new connections the request threads hold the GIL most of the time,
and the main thread, woken by the kernel, waits for it (up to the 5 ms switch interval) before
each accept: the connections queue in the kernel meanwhile. This worker accepts every
connection waiting (up to ACCEPT_BATCH) each time it wakes.
"""

from __future__ import annotations

import json
import logging
import os
import select
import uuid
from pathlib import Path

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.workers.gthread import ThreadWorker

from .config.schema import DEFAULT_STREAM_TIMEOUT_SECONDS
from .threads import ElasticThreadPool, freeze_heap, limit_arenas

# How long the thread that answered on a kept-alive connection waits for the next request on it
# before giving the connection back to gunicorn's main thread (see the module docstring).
LINGER_SECONDS = 0.002
# Connections the main thread accepts each time it wakes for its listening socket.
ACCEPT_BATCH = 64
# Where the master counts its reloads (in its own multiprocess metrics folder).
RELOAD_STAMP = "ai-proxy-reloads"
# Where the workers count memory:// quotas together (app.hooks.limits_shared), in that folder.
QUOTA_FILE = "ai-proxy-quotas.bin"
# How long a worker replaced by a reload may take to finish its streams: the longest a stream
# may last and a little more, but never past MAX_DRAIN_SECONDS. gunicorn counts a draining
# worker among its workers, so while it drains none is started in its place (should a new one
# die): the drain is bounded.
DRAIN_MARGIN_SECONDS = 30
MAX_DRAIN_SECONDS = 300

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


class _Collect:
    """A stand-in socket that keeps what gunicorn writes to it (`util.write` calls `sendall`)."""

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data) -> None:
        self.data += bytes(data)


# Header names gunicorn's `process_headers` has accepted as they are (valid, not hop-by-hop),
# each with its lower-case form: at most this many (an app's names are a small fixed set).
MAX_KNOWN_NAMES = 256
_KNOWN_NAMES: dict[str, str] = {}


class OneWriteResponse(wsgi.Response):
    """gunicorn's HTTP/1 response, with a whole body sent in one write with its header block,
    and the answer's headers checked in one pass.

    gunicorn writes the header block (`send_headers`) and then the body (`_emit_body`), a
    `sendall` each: two system calls, each letting go of the GIL. When the first write holds the
    whole body (exactly its Content-Length), as every JSON answer of the proxy does, the header
    block is collected instead and goes out with it. Anything else (a chunked stream, a body in
    pieces, a response without a body) is written as gunicorn writes it.

    gunicorn's `process_headers` matches every header's name and value against its patterns and
    looks up whether it is hop-by-hop: about 2.5 us a header, and the proxy's answers carry a
    dozen. Names it has accepted before are known (`_KNOWN_NAMES`), and since its value pattern
    is a class of characters, the values all match when they match joined by a tab (itself
    allowed); then each value is only stripped, as gunicorn strips it. Any other header (a new
    or hop-by-hop name, a value that is not a string or does not match) goes through gunicorn's
    own `process_headers`, with its errors.
    """

    _head: bytes | None = None

    def process_headers(self, headers) -> None:
        # Each name's lower-case form is read once here: another thread may clear the known
        # names meanwhile (see _process_headers_slowly).
        if type(headers) is not list:  # (WSGI says a list; anything else as gunicorn reads it)
            return super().process_headers(headers)
        known, lowers, values = _KNOWN_NAMES, [], []
        for name, value in headers:
            lower = known.get(name) if type(name) is str else None
            if lower is None or type(value) is not str:
                return self._process_headers_slowly(headers)
            lowers.append(lower)
            values.append(value)
        if not wsgi.HEADER_VALUE_RE.fullmatch("\t".join(values)):
            return self._process_headers_slowly(headers)
        for (name, value), lower in zip(headers, lowers, strict=True):
            value = value.strip(" \t")
            if lower == "content-length":
                self.response_length = int(value)
            self.headers.append((name, value))
        return None

    def _process_headers_slowly(self, headers) -> None:
        start = len(self.headers)
        super().process_headers(headers)
        # Accepted names that went through unchanged (hop-by-hop ones are dropped) are known.
        if len(_KNOWN_NAMES) + len(self.headers) - start > MAX_KNOWN_NAMES:
            _KNOWN_NAMES.clear()
        for name, _value in self.headers[start:]:
            if not util.is_hoppish(name):
                _KNOWN_NAMES[name] = name.lower()

    def write(self, arg) -> None:
        if (
            not self.headers_sent
            and not self.chunked
            and not self._omits_body
            and type(arg) is bytes
            and arg
            and self.response_length == len(arg)
        ):
            sock, collect = self.sock, _Collect()
            self.sock = collect
            try:
                self.send_headers()
            finally:
                self.sock = sock
            self._head = collect.data
        try:
            super().write(arg)
        finally:
            head, self._head = self._head, None
            if head is not None:  # (the body was not written after all: the headers still go)
                util.write(self.sock, head)

    def _emit_body(self, data) -> None:
        head, self._head = self._head, None
        super()._emit_body(head + data if head is not None else data)


def _in_folder(name: str) -> Path | None:
    """A file of the server's own (in its multiprocess metrics folder, which the master made)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(folder) / name if folder else None


def _stamp() -> Path | None:
    return _in_folder(RELOAD_STAMP)


def reloads() -> int:
    """How many reloads the master has begun (0 when it has not counted any)."""
    stamp = _stamp()
    try:
        return int(stamp.read_text()) if stamp else 0
    except (OSError, ValueError):
        return 0


def stamp_reload() -> None:
    """The master's count, before a reload's new workers start, of one more reload."""
    stamp = _stamp()
    if stamp:
        try:
            stamp.write_text(str(reloads() + 1))
        except OSError:
            pass  # the old workers then stop as on TERM, within the graceful timeout


def forget_earlier_run(keep_quotas: bool = False) -> None:
    """A master starting afresh (its folder may be an earlier run's): no reloads, and quotas
    start from nothing, as memory:// ones always have (unless `keep_quotas`)."""
    for path in (_stamp(), None if keep_quotas else _in_folder(QUOTA_FILE)):
        if path:
            path.unlink(missing_ok=True)


class ProxyWorker(ThreadWorker):
    """gunicorn's gthread worker with JSON for the errors gunicorn answers itself.

    A worker stopped by a reload (`kill -HUP`: gunicorn starts new workers, then sends the old
    ones TERM) finishes the streams it holds within its stream timeout, up to MAX_DRAIN_SECONDS;
    gunicorn would cut them at its graceful timeout (30 s), which is for stopping the server
    (TERM to the master), and that keeps it.
    """

    # The master's reload count when this worker started.
    reloads_at_boot = 0

    def init_process(self) -> None:
        self.reloads_at_boot = reloads()
        util.write_error = write_json_error
        # This process's HTTP/1 answers: a whole body goes out with its headers (see above).
        wsgi.Response = OneWriteResponse
        logging.getLogger("gunicorn.error").addFilter(_QuoteFilter())
        limit_arenas()
        # memory:// quotas count every worker's requests together (kept across reloads).
        from .hooks.limits_shared import share_between_workers

        quotas = _in_folder(QUOTA_FILE)
        share_between_workers(str(quotas) if quotas else None)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # Everything the worker has built so far (modules, the app, its config) lives as long
        # as the worker: kept out of the cyclic collector's sweeps from here on (see freeze_heap).
        freeze_heap()

    def handle_exit(self, sig, frame) -> None:
        # A signal handler: it may run at any point of the worker's life (while its app is
        # still loading, say), and nothing here may stop the worker from stopping.
        try:
            if self.alive and reloads() > self.reloads_at_boot:
                # Replaced by a reload: the new workers take every new connection meanwhile.
                drain = min(int(self._stream_timeout()) + DRAIN_MARGIN_SECONDS, MAX_DRAIN_SECONDS)
                self.cfg.set("graceful_timeout", max(drain, self.cfg.graceful_timeout))
        except Exception:  # noqa: BLE001 - then it stops within the graceful timeout.
            logging.getLogger(__name__).exception("a reload's drain could not be set")
        super().handle_exit(sig, frame)

    def _stream_timeout(self) -> float:
        # Not imported with this module: the master loads it, and app.state brings the metrics.
        from .state import EXTENSION_KEY

        app = getattr(self, "wsgi", None)  # None until the app is loaded
        state = getattr(app, "extensions", {}).get(EXTENSION_KEY)
        routing = getattr(getattr(state, "config", None), "routing", None)
        return getattr(routing, "stream_timeout_seconds", DEFAULT_STREAM_TIMEOUT_SECONDS)

    def get_thread_pool(self) -> ElasticThreadPool:
        # Threads beyond the load's need end once idle: memory returns after a burst.
        return ElasticThreadPool(self.cfg.threads)

    def accept(self, listener) -> None:
        """Every connection waiting on `listener` (up to ACCEPT_BATCH), not only one."""
        for _ in range(ACCEPT_BATCH):
            before = self.nr_conns
            super().accept(listener)  # nothing when none waits (EAGAIN), or it was aborted
            if self.nr_conns == before or self.nr_conns >= self.worker_connections:
                return

    def handle(self, conn):
        """gunicorn's handling of one request, then of the next ones on the same kept-alive
        connection while each comes within LINGER_SECONDS (see the module docstring)."""
        keepalive = super().handle(conn)
        while keepalive is True and self._may_linger() and _next_request_within(conn):
            keepalive = super().handle(conn)
        return keepalive

    def _may_linger(self) -> bool:
        """Only a running worker whose pool has no connection waiting for a thread lingers."""
        pool = self.tpool
        return self.alive and isinstance(pool, ElasticThreadPool) and not pool.queued


def _next_request_within(conn, seconds: float = LINGER_SECONDS) -> bool:
    """Whether the connection's next request is there, or comes within `seconds`: bytes already
    read ahead into the parser's buffer or decrypted by TLS, or the socket readable (data, or
    the client's close, which the next read sees as the end of the connection)."""
    parser = conn.parser
    if parser is None or getattr(conn, "is_http2", False):
        return False
    unreader = getattr(parser, "unreader", None)
    buffered = getattr(unreader, "buf", None)
    if buffered is not None and buffered.getbuffer().nbytes:
        return True
    pending = getattr(conn.sock, "pending", None)  # TLS: bytes already decrypted
    if pending is not None and pending():
        return True
    try:
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        return bool(poller.poll(seconds * 1000))
    except (OSError, ValueError):
        return False
