"""The module-level WSGI app for gunicorn: `gunicorn wsgi:app` from the project folder.

Run from the project folder, plain `gunicorn wsgi:app` reads ./gunicorn.conf.py (gunicorn's default
config file), which gives it the proxy's settings: gthread workers, HOST/PORT (127.0.0.1:8080),
JSON logs, long streams, the config checked before workers start and on `kill -HUP`. From another
folder, name the settings: `gunicorn -c /path/to/conf/gunicorn.conf.py wsgi:app`.

`.env` is loaded here (the real environment wins) unless the gunicorn master has already handed
this worker the environment and config it checked.
"""

import logging
import os

try:
    # This repository's folder, run from it (`gunicorn wsgi:app`).
    from app import create_app
    from app.config import load_env_file, runtime_from_env
    from app.logs import configure_logging
    from app.server import handed_over
except ImportError:
    # The installed package, run from anywhere else.
    from ai_proxy import create_app
    from ai_proxy.config import load_env_file, runtime_from_env
    from ai_proxy.logs import configure_logging
    from ai_proxy.server import handed_over

if not handed_over():
    load_env_file()
if not logging.getLogger().handlers:
    _runtime = runtime_from_env(os.environ, [])
    configure_logging(_runtime.log_level, _runtime.log_format)

app = create_app()
