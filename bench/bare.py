"""The reference: a bare Flask + requests forwarder, served with the proxy's own gunicorn settings.

    BARE_UPSTREAM=http://127.0.0.1:9000 PORT=9001 WEB_CONCURRENCY=2 python bench/bare.py

It does the least a forwarder can: one pooled `requests.Session` per worker, the POST body sent
upstream as is, the answer returned (a stream relayed with `iter_content`). No auth, validation,
routing or JSON work, so proxy minus bare is what the proxy's own features cost.
"""

import os

import requests
from flask import Flask, Response, request

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9000")
app = Flask(__name__)
session = requests.Session()
# As many pooled upstream connections as the worker has threads (the proxy's pool is sized so too).
pool_size = int(os.environ.get("THREADS") or 64)
session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=pool_size))


@app.get("/healthz")
def healthz():
    return {"status": "ok"}


@app.post("/v1/chat/completions")
def chat():
    upstream = session.post(
        UPSTREAM + "/v1/chat/completions",
        data=request.get_data(),
        headers={"Content-Type": "application/json"},
        stream=True,
    )
    if upstream.headers.get("Content-Type", "").startswith("text/event-stream"):
        return Response(
            upstream.iter_content(chunk_size=None),
            upstream.status_code,
            content_type=upstream.headers["Content-Type"],
        )
    return Response(
        upstream.content, upstream.status_code, content_type=upstream.headers["Content-Type"]
    )


def main() -> None:
    """Serve `app` under exactly the gunicorn options `conf/gunicorn.conf.py` gives the proxy."""
    try:
        from app.server import ProxyApplication, gunicorn_options
    except ImportError:  # bench/ is sys.path[0]: the installed package
        from ai_proxy.server import ProxyApplication, gunicorn_options

    options = gunicorn_options(os.environ)
    # on_starting validates the proxy's config file: not this app's business. The other hooks
    # (metrics directory clean-up) are harmless and keep the master's work the same.
    options.pop("on_starting", None)

    class BareApplication(ProxyApplication):
        def load(self):
            return app

    BareApplication(options).run()


if __name__ == "__main__":
    main()
