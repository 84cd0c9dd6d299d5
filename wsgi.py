"""The module-level WSGI app for `gunicorn wsgi:app`; loads `.env` first (real env wins)."""

import logging
import os

from app import create_app
from app.config import load_env_file, runtime_from_env
from app.logs import configure_logging

load_env_file()
if not logging.getLogger().handlers:
    _runtime = runtime_from_env(os.environ, [])
    configure_logging(_runtime.log_level, _runtime.log_format)

app = create_app()
