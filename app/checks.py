"""Checks beyond the config file's own that `serve`, gunicorn and `check-config` share.

Kept apart from app.server: importing gunicorn's settings fails outright on some invalid
environment values (WEB_CONCURRENCY=many), which `check-config` must report as a line instead.
"""

from __future__ import annotations

from .config import Config
from .providers import check_models


def check_serving(config: Config) -> list[str]:
    """Problems that leave nothing to serve: provider checks and a model list left empty."""
    problems = check_models(config.models)
    if not config.models:
        left_out = [r.split(":", 1)[0] for r in config.left_out if r.startswith("models[")]
        if left_out:
            problems.append(
                f"models: no model is left to serve: {', '.join(left_out)} left out because "
                "their token variable is not set"
            )
        else:
            problems.append("models: no model is configured")
    return problems
