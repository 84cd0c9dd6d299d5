"""A gunicorn worker and app for tests/test_worker_linger.py: the proxy's worker, counting the
times gunicorn's main thread took a kept-alive connection back (`finish_request` for a request
that kept its connection; closed connections are not counted), and an app answering with that
count (or, at /gc, what the cyclic garbage collector holds frozen)."""

from __future__ import annotations

import gc

from gunicorn.http import wsgi

from app.worker import ProxyWorker

TAKEN_BACK = [0]


class CountingWorker(ProxyWorker):
    def finish_request(self, conn, fs):
        if not fs.cancelled() and fs.exception() is None and fs.result() is True:
            TAKEN_BACK[0] += 1
        super().finish_request(conn, fs)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/response":  # the class gunicorn answers through here
        body = wsgi.Response.__name__.encode()
    elif environ["PATH_INFO"] == "/gc":  # the collector as the worker left it (test_worker_linger)
        body = f"{gc.get_freeze_count()} {gc.isenabled()}".encode()
    else:
        body = str(TAKEN_BACK[0]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
