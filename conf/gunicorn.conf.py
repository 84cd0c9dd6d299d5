"""gunicorn settings for ai-proxy: `gunicorn -c conf/gunicorn.conf.py wsgi:app`.

Everything comes from the environment (HOST, PORT, WEB_CONCURRENCY, THREADS, LOG_LEVEL,
LOG_FORMAT); the config file is validated in the master before any worker starts and on every
`kill -HUP`. ./gunicorn.conf.py applies the same settings to a plain `gunicorn wsgi:app` run from
the project folder; both take them from app.server.gunicorn_options.
"""

try:
    # This repository's folder, run from it.
    from app.server import gunicorn_options
except ImportError:
    # The installed package (`ai_proxy`), run from anywhere else.
    from ai_proxy.server import gunicorn_options

globals().update(gunicorn_options())
