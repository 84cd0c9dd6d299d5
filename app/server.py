"""Serving: the gunicorn settings shared by conf/gunicorn.conf.py and `ai-proxy serve`."""

from __future__ import annotations

import glob
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping

from gunicorn.app.base import BaseApplication

from app.auth import is_loopback_host
from app.config import (
    Config,
    ConfigError,
    RuntimeConfig,
    load_config,
    load_env_file,
    runtime_from_env,
)
from app.providers import check_models

logger = logging.getLogger("ai_proxy.server")

DEFAULT_GRACEFUL_TIMEOUT = 30
DEFAULT_WORKER_TIMEOUT = 120
DEFAULT_KEEPALIVE = 5
LIMIT_FIELDS = (
    "requests_per_minute",
    "requests_per_hour",
    "requests_per_day",
    "tokens_per_minute",
    "tokens_per_day",
    "budget_per_day",
    "budget_per_month",
)
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(B)s %(D)sus id=%({x-request-id}o)s'


def bind_address(runtime: RuntimeConfig) -> str:
    host = runtime.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{runtime.port}"


def gunicorn_options(env: Mapping[str, str] | None = None) -> dict:
    """gthread workers, binds and logging from the environment (see CONTRACT section 2)."""
    prepare_metrics_dir()
    if env is None:
        try:
            load_env_file()
        except ConfigError as err:
            _fail(err.problems)
        env = os.environ
    problems: list[str] = []
    runtime = runtime_from_env(env, problems)
    if problems:
        _fail(problems)
    return {
        "bind": [bind_address(runtime)],
        "workers": runtime.workers,
        "threads": runtime.threads,
        "worker_class": "gthread",
        "preload_app": False,
        "graceful_timeout": DEFAULT_GRACEFUL_TIMEOUT,
        "timeout": DEFAULT_WORKER_TIMEOUT,
        "keepalive": DEFAULT_KEEPALIVE,
        # The app writes one richer line per request itself (logger ai_proxy.access, stdout).
        "accesslog": None,
        "errorlog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "loglevel": runtime.log_level.lower(),
        "logger_class": "app.logs.ProxyGunicornLogger",
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        # One host may run several proxies; the gunicornc control socket is not needed.
        "control_socket_disable": True,
        "on_starting": on_starting,
        "child_exit": child_exit,
        "on_exit": on_exit,
    }


def prepare_metrics_dir() -> str:
    """PROMETHEUS_MULTIPROC_DIR for the workers, set before any of them imports the metrics."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="ai-proxy-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        os.environ["AI_PROXY_OWNS_METRICS_DIR"] = "1"
    os.makedirs(path, exist_ok=True)
    return path


def child_exit(server, worker) -> None:
    """gunicorn master hook: a dead worker's live gauges no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.environ.get("AI_PROXY_OWNS_METRICS_DIR"):
        shutil.rmtree(path, ignore_errors=True)


def check_startup(config: Config, binds: list[str]) -> list[str]:
    """Problems that stop the server from starting, beyond the config file's own."""
    problems = check_models(config.models)
    if not config.tokens:
        for bind in binds:
            if bind.startswith(("unix:", "fd://")):
                continue
            host = bind.rsplit(":", 1)[0] if ":" in bind else bind
            if not is_loopback_host(host):
                problems.append(
                    f"bind {bind}: no client token is configured, so the proxy only serves on a "
                    "loopback address; set AUTH_TOKEN or auth.tokens to listen on others"
                )
    return problems


def log_loaded(config: Config, workers: int = 1) -> None:
    """Start-up lines: what was loaded, what was left out and why."""
    logger.info(
        "config %s: %d model deployment(s), %d alias(es), %d client token(s)",
        config.source,
        len(config.models),
        len(config.aliases),
        len(config.tokens),
    )
    for reason in config.left_out:
        logger.warning("left out %s", reason)
    if not config.tokens:
        logger.warning("no client token is configured: serving local clients without auth")
    if workers > 1 and config.rate_limits.storage.startswith("memory"):
        limited = any(
            getattr(item, name, 0)
            for item in (*config.models, *config.tokens)
            for name in LIMIT_FIELDS
        )
        logger.warning(
            "memory:// with %d workers: each worker keeps its own cooldowns%s; "
            "set RATE_LIMIT_STORAGE=redis://... to share them",
            workers,
            f" and counts its own quotas, so every limit is {workers}x too loose"
            if limited
            else "",
        )


def on_starting(server) -> None:
    """gunicorn master hook: validate the config before any worker starts."""
    # Samples of an earlier run in a reused directory would be counted again.
    for stale in glob.glob(os.path.join(prepare_metrics_dir(), "*.db")):
        os.remove(stale)
    try:
        config = load_config()
    except ConfigError as err:
        _fail(err.problems)
    problems = check_startup(config, list(server.cfg.bind))
    if problems:
        _fail(problems)
    log_loaded(config, server.cfg.workers)


def _fail(problems: list[str]) -> None:
    for problem in problems:
        print(f"ai-proxy: {problem}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(1)


class ProxyApplication(BaseApplication):
    """gunicorn in-process, for `ai-proxy serve`."""

    def __init__(self, options: dict) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None and key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        from app import create_app

        return create_app()
