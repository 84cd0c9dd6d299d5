"""ai-proxy: one OpenAI- and Anthropic-compatible API in front of many LLM providers.

`create_app` and `AIProxy` are imported on first use, so that `app.server` (loaded by the
gunicorn master) can prepare the environment before Flask and the metrics are imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:
    from flask import Flask

    from .extension import AIProxy

__all__ = ["AIProxy", "__version__", "create_app"]


def create_app(overrides: Mapping | None = None) -> Flask:
    """The proxy as a WSGI app.

    `overrides` is merged over the config file (dicts merge, lists replace). Three keys are not
    config: `config_path` (the file to read), `env` (a mapping used instead of os.environ) and
    `url_prefix` (where to serve the API).
    """
    from .extension import AIProxy
    from .flaskapp import ProxyFlask

    overrides = dict(overrides or {})
    config_path = overrides.pop("config_path", None)
    env = overrides.pop("env", None)
    url_prefix = overrides.pop("url_prefix", "")
    app = ProxyFlask(__name__)
    AIProxy(app, url_prefix=url_prefix, config_path=config_path, overrides=overrides, env=env)
    return app


def __getattr__(name: str):
    if name == "AIProxy":
        from .extension import AIProxy

        return AIProxy
    raise AttributeError(f"module 'app' has no attribute {name!r}")
