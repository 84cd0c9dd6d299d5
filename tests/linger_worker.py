"""A gunicorn worker and app for tests/test_worker_linger.py: the proxy's worker, counting the
times gunicorn's main thread took a connection back (`finish_request`), and an app answering
with that count."""

from __future__ import annotations

from app.worker import ProxyWorker

TAKEN_BACK = [0]


class CountingWorker(ProxyWorker):
    def finish_request(self, conn, fs):
        TAKEN_BACK[0] += 1
        super().finish_request(conn, fs)


def app(environ, start_response):
    body = str(TAKEN_BACK[0]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
