"""The proxy's (or the bare forwarder's) WSGI app in this process, set up as bench/run.py
configures its server, against a fake upstream started here: for bench/profile.py --cprofile and
bench/instructions.py, which drive it one request at a time with no gunicorn in between.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import processes
from common import CHAT_PATH, CLIENT_TOKEN, ROOT, request_body


def wsgi_request(app, environ: dict, body: bytes) -> int:
    """One request through the WSGI app, its answer read and closed: the status."""
    env = dict(environ)
    env["wsgi.input"] = io.BytesIO(body)
    status = []

    def start_response(line, headers, exc_info=None):
        status.append(int(line.split(" ", 1)[0]))

    answer = app(env, start_response)
    try:
        for _ in answer:
            pass
    finally:
        close = getattr(answer, "close", None)
        if close:
            close()
    return status[0]


def chat_environ(body: bytes) -> dict:
    """The WSGI environ of the benchmark's POST /v1/chat/completions (its body not included)."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": CHAT_PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8080",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1:8080",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_AUTHORIZATION": f"Bearer {CLIENT_TOKEN}",
        "HTTP_USER_AGENT": "bench",
        "HTTP_ACCEPT": "*/*",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def load_app(
    target: str,
    children: processes.Children,
    workdir: Path,
    storage: str = "memory://",
    cache: bool = False,
    stream: bool = False,
    chunks: int = 1,
):
    """(app, environ, body): the target's WSGI app with every feature on (the proxy's access log
    written to /dev/null), a fake upstream started among `children` (streaming `chunks` content
    chunks), and the request to send."""
    metrics_dir = tempfile.mkdtemp(prefix="metrics-", dir=workdir)
    up_url, _ = processes.start_upstream(children, workdir, "upstream", chunks, 0.0)
    config_text = processes.proxy_config(up_url, storage)
    if cache:
        cached = json.loads(config_text)
        cached["cache"] = {"enabled": True, "ttl_seconds": 3600}
        config_text = json.dumps(cached)
    config = workdir / "proxy.yaml"
    config.write_text(config_text)
    os.environ.update(
        AI_PROXY_CONFIG=str(config), PROMETHEUS_MULTIPROC_DIR=metrics_dir, LOG_FORMAT="json"
    )
    sys.path.insert(0, str(ROOT))
    if target == "bare":
        os.environ["BARE_UPSTREAM"] = up_url
        import bare

        app = bare.app
    else:
        from app import create_app
        from app.logs import configure_logging

        configure_logging("INFO", "json")
        devnull = open(os.devnull, "w")  # noqa: SIM115 - for the whole run
        for handler in logging.getLogger("ai_proxy.access").handlers:
            handler.setStream(devnull)
        app = create_app()
    body = request_body(stream)
    return app, chat_environ(body), body
