"""The log line of an upstream that fails names what failed underneath (class names only), so an
operator can tell a refused connection from one the upstream dropped; no URL, no key."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from app.config import RetryConfig
from app.errors import UpstreamError
from app.upstream import UpstreamPool
from tests.servers import free_port

KEY = "sk-upstream-secret-key-123"


def dropping_server() -> tuple[socket.socket, int]:
    """Accepts connections, reads the request, and closes without a byte of answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.mark.parametrize("case", ["refused", "dropped"])
def test_the_failure_log_names_the_underlying_error_without_url_or_key(caplog, case):
    listener = None
    if case == "dropped":
        listener, port = dropping_server()
    else:
        port = free_port()  # nothing listens there
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    pool = UpstreamPool(RetryConfig(max_retries=0), 2)
    try:
        with caplog.at_level(logging.WARNING, logger="app.upstream"):
            with pytest.raises(UpstreamError):
                pool.send(
                    "POST",
                    url,
                    label="m (openai)",
                    headers={"Authorization": f"Bearer {KEY}"},
                    body=b"{}",
                    timeout=(2, 2),
                )
    finally:
        pool.close()
        if listener is not None:
            listener.close()
    (line,) = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    expected = "ConnectionRefusedError" if case == "refused" else "RemoteDisconnected"
    assert expected in line, line
    assert str(port) not in line and "127.0.0.1" not in line and KEY not in line
