"""gunicorn reads this file from the current folder by default, so a plain `gunicorn wsgi:app`
run from the project folder gets the proxy's settings (gthread, PORT, JSON logs, config checks).

The settings live in app.server.gunicorn_options, shared with conf/gunicorn.conf.py and
`ai-proxy serve`.
"""

try:
    # This repository's folder, run from it.
    from app.server import gunicorn_options
except ImportError:
    # The installed package (`ai_proxy`), run from anywhere else.
    from ai_proxy.server import gunicorn_options

globals().update(gunicorn_options())
