"""Serving: the gunicorn settings shared by gunicorn.conf.py and `ai-proxy serve`.

The master validates the config before any worker starts and on every `kill -HUP`; workers boot
from the copy of the file the master last accepted, so a bad edit never reaches them.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from gunicorn.app.base import BaseApplication
from gunicorn.util import is_ipv6, parse_address

from .auth import is_loopback_host
from .checks import check_serving
from .config import (
    GO_CONFIG_PATH,
    MAX_CONFIG_BYTES,
    Config,
    ConfigError,
    RuntimeConfig,
    load_config,
    load_env_file,
    resolve_config_path,
    runtime_from_env,
)
from .worker import forget_earlier_run, stamp_reload

logger = logging.getLogger("ai_proxy.server")

DEFAULT_GRACEFUL_TIMEOUT = 30
DEFAULT_WORKER_TIMEOUT = 120
DEFAULT_KEEPALIVE = 5
ACCESS_LOG_FORMAT = '%(h)s "%(r)s" %(s)s %(B)s %(D)sus id=%({x-request-id}o)s'
# Named from this package, whatever it is imported as (`app` in this folder, `ai_proxy` installed).
PACKAGE = __name__.rpartition(".")[0]
WORKER_CLASS = f"{PACKAGE}.worker.ProxyWorker"


@dataclass
class Serving:
    """What the master last accepted; forked workers inherit it and boot from exactly this."""

    options: dict | None = None
    config: Config | None = None
    # A private copy of the accepted file (None for the built-in default) and the environment
    # it was read with: the user's file may be edited again before a worker is (re)started.
    snapshot: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    # Variables the .env file set (the real environment did not).
    dotenv: set[str] = field(default_factory=set)
    older: list[Path] = field(default_factory=list)
    # On HUP: the config gunicorn_options checked (on_reload adopts it), or that it refused one.
    staged: tuple[Config, Path | None] | None = None
    refused: bool = False
    # gunicorn's own `-e` variables, where it listens, and the binds its command line fixed.
    raw_env: dict[str, str] = field(default_factory=dict)
    binds: list[str] = field(default_factory=list)
    fixed_binds: list[str] | None = None


_serving = Serving()


def bind_address(runtime: RuntimeConfig) -> str:
    host = runtime.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{runtime.port}"


def gunicorn_options(env: Mapping[str, str] | None = None) -> dict:
    """gthread workers, binds and logging from the environment (see CONTRACT section 2)."""
    reloading = _serving.config is not None and _serving.options is not None
    _serving.staged = None
    saved = (dict(os.environ), set(_serving.dotenv))
    try:
        return _options(env, reloading, saved)
    except Exception:
        if not reloading:
            raise
        # On HUP, whatever it is, the master must live on.
        logger.exception("reload refused, still serving the previous config")
        return _refuse_reload([], saved)


def _options(
    env: Mapping[str, str] | None, reloading: bool, saved: tuple[dict[str, str], set[str]]
) -> dict:
    prepare_metrics_dir()
    if env is None:
        # gunicorn runs this again on HUP: .env is read afresh, so an entry removed or changed
        # there takes effect (the real environment still wins over it).
        for key in _serving.dotenv:
            os.environ.pop(key, None)
        before = set(os.environ)
        try:
            load_env_file()
        except ConfigError as err:
            if not reloading:
                _fail(err.problems)
            return _refuse_reload(err.problems, saved)
        _serving.dotenv = {key for key in os.environ if key not in before}
        env = os.environ
    if reloading:
        # gunicorn takes its own `-e`/raw_env variables out while it re-reads this file and puts
        # them back after: the config is checked with them, as the workers will read it.
        os.environ.update(_serving.raw_env)
    problems: list[str] = []
    runtime = runtime_from_env(env, problems)
    if problems:
        if reloading:
            # gunicorn reads this again on HUP, and exiting here would stop the master. The
            # file's own problems are named with the environment's, all at once.
            try:
                _discard(stage_config([])[1])
            except ConfigError as err:
                problems = list(dict.fromkeys([*problems, *err.problems]))
            except Exception:  # noqa: BLE001 - the environment's problems are enough to say.
                pass
            return _refuse_reload(problems, saved)
        _fail(problems)
    options = {
        "bind": [bind_address(runtime)],
        "workers": runtime.workers,
        "threads": runtime.threads,
        # gthread with errors gunicorn writes itself (400, 414, 431) in JSON.
        "worker_class": WORKER_CLASS,
        "preload_app": False,
        "graceful_timeout": DEFAULT_GRACEFUL_TIMEOUT,
        "timeout": DEFAULT_WORKER_TIMEOUT,
        "keepalive": DEFAULT_KEEPALIVE,
        # The app writes one richer line per request itself (logger ai_proxy.access, stdout).
        "accesslog": None,
        "errorlog": "-",
        "access_log_format": ACCESS_LOG_FORMAT,
        "loglevel": runtime.log_level.lower(),
        "logger_class": f"{PACKAGE}.logs.ProxyGunicornLogger",
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        # One host may run several proxies; the gunicornc control socket is not needed.
        "control_socket_disable": True,
        "on_starting": on_starting,
        "on_reload": on_reload,
        "post_fork": post_fork,
        "child_exit": child_exit,
        "on_exit": on_exit,
    }
    if reloading:
        # On HUP gunicorn binds a new address before on_reload runs, and its master exits if
        # that fails: so the new config is checked whole here (binds included), and a refused
        # one leaves gunicorn's settings as they were.
        # Binds given on gunicorn's command line (-b) win over ours and do not move on HUP.
        binds = _serving.fixed_binds or list(options["bind"])
        added = [b for b in binds if b not in _serving.binds]
        busy = busy_binds(added, every_failure=True, own_ports=_ports(_serving.binds))
        if busy:
            return _refuse_reload(busy, saved)
        try:
            _serving.staged = stage_config(binds)
        except ConfigError as err:
            return _refuse_reload(err.problems, saved)
    _serving.options = options
    return options


def _refuse_reload(problems: list[str], saved: tuple[dict[str, str], set[str]]) -> dict:
    """Keep serving what was accepted: gunicorn's settings and the environment as they were."""
    for problem in problems:
        logger.error("reload refused, still serving the previous config: %s", problem)
    environ, _serving.dotenv = saved
    os.environ.clear()
    os.environ.update(environ)
    _serving.refused = True
    return dict(_serving.options)


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
    for snapshot in (_serving.snapshot, *_serving.older):
        if snapshot is not None:
            shutil.rmtree(snapshot.parent, ignore_errors=True)


def check_startup(config: Config, binds: list[str]) -> list[str]:
    """Problems that stop the server from starting, beyond the config file's own."""
    problems = check_serving(config)
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


def log_config(config: Config, applied: str = "") -> None:
    """What a config holds, and what was left out of it and why."""
    logger.info(
        "%sconfig %s: %d model deployment(s), %d alias(es), %d client token(s)",
        applied,
        config.source,
        len(config.models),
        len(config.aliases),
        len(config.tokens),
    )
    for reason in config.left_out:
        logger.warning("left out %s", reason)


def log_loaded(config: Config, workers: int = 1) -> None:
    """Start-up lines: what was loaded, what was left out and why."""
    log_config(config)
    if not config.tokens:
        logger.warning("no client token is configured: serving local clients without auth")
    if workers > 1 and not config.rate_limits.storage.startswith("redis"):
        # Quotas are counted together by this server's workers (app.hooks.limits_shared).
        logger.warning(
            "%s with %d workers: each worker keeps its own cooldowns; "
            "set RATE_LIMIT_STORAGE to a Redis URL to share them",
            config.rate_limits.storage.split("://", 1)[0] + "://",
            workers,
        )


def on_starting(server) -> None:
    """gunicorn master hook: validate the config before any worker starts."""
    # Samples of an earlier run in a reused directory would be counted again.
    for stale in glob.glob(os.path.join(prepare_metrics_dir(), "*.db")):
        os.remove(stale)
    # So would an earlier run's status page counts (app.activity), and its reloads.
    for stale in glob.glob(os.path.join(prepare_metrics_dir(), "ai-proxy-activity-*.json")):
        os.remove(stale)
    inherited = server.LISTENERS or os.environ.get("GUNICORN_FD") or os.environ.get("LISTEN_FDS")
    # A master started by the one before it (USR2) serves beside its workers until they stop:
    # both count in the same quota table.
    forget_earlier_run(keep_quotas=bool(inherited))
    # Every problem at once: a taken port and a bad setting are both for the user to fix.
    busy = [] if inherited else busy_binds(list(server.cfg.bind))
    try:
        config, snapshot = stage_config(list(server.cfg.bind))
    except ConfigError as err:
        _fail(err.problems + busy)
    if busy:
        _discard(snapshot)
        _fail(busy)
    _adopt(config, snapshot)
    _serving.raw_env = dict(server.cfg.env)
    _serving.binds = list(server.cfg.bind)
    if _serving.options is not None and _serving.binds != list(_serving.options["bind"]):
        _serving.fixed_binds = list(_serving.binds)
    log_loaded(config, server.cfg.workers)


def on_reload(server) -> None:
    """gunicorn master hook on HUP, before new workers start: accept the new config or keep the
    old one. Workers boot from what was accepted (see post_fork), so a refused file never
    reaches them, not even a worker respawned later."""
    # Either way gunicorn now replaces the workers: the old ones finish their streams.
    stamp_reload()
    if _serving.refused:
        # gunicorn_options refused it (and said why) before gunicorn acted on it.
        _serving.refused = False
        return
    staged, _serving.staged = _serving.staged, None
    try:
        config, snapshot = staged or stage_config(list(server.cfg.bind))
    except ConfigError as err:
        for problem in err.problems:
            logger.error("reload refused, still serving the previous config: %s", problem)
        return
    except Exception:
        # Whatever went wrong, the master must live on with the config it has.
        logger.exception("reload refused, still serving the previous config")
        return
    _adopt(config, snapshot)
    _serving.binds = list(server.cfg.bind)
    log_config(config, applied="reload applied: ")


def post_fork(server, worker) -> None:
    """gunicorn hook in a new worker, before it loads the app: the accepted config and env."""
    if _serving.config is None:
        return
    os.environ.clear()
    os.environ.update(_serving.env)
    if _serving.snapshot is not None:
        os.environ["AI_PROXY_CONFIG"] = str(_serving.snapshot)


def handed_over() -> bool:
    """Whether this process is a worker the master gave its checked config and environment."""
    return _serving.config is not None


def stage_config(binds: list[str]) -> tuple[Config, Path | None]:
    """Copy the config file aside and validate the copy; ConfigError names the user's file."""
    source = resolve_config_path(None, os.environ)
    if source == Path(GO_CONFIG_PATH) and not os.environ.get("AI_PROXY_CONFIG"):
        # Workers read the staged copy, so the master says where the config came from.
        logger.info(
            "no config named (--config, AI_PROXY_CONFIG): using ./%s, the Go ai-proxy's "
            "default location",
            GO_CONFIG_PATH,
        )
    if source is None:
        config = load_config()
        snapshot = None
    else:
        snapshot = _copy_config(source)
        try:
            config = replace(load_config(str(snapshot)), source=str(source))
        except ConfigError as err:
            _discard(snapshot)
            raise ConfigError(
                [p.replace(str(snapshot), str(source)) for p in err.problems]
            ) from None
        except BaseException:
            # The copy may hold secrets written inline: it never outlives a failed check.
            _discard(snapshot)
            raise
    try:
        problems = check_startup(config, binds)
    except BaseException:
        _discard(snapshot)
        raise
    if problems:
        _discard(snapshot)
        raise ConfigError(problems)
    return config, snapshot


def _copy_config(source: Path) -> Path:
    try:
        with open(source, "rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError([f"{source}: cannot read: {err.strerror or err}"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{source}: larger than {MAX_CONFIG_BYTES} bytes"])
    # Private and, where there is one, in memory: the file may hold secrets written inline.
    folder = tempfile.mkdtemp(
        prefix="ai-proxy-config-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    snapshot = Path(folder) / "config.yaml"
    fd = os.open(snapshot, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    return snapshot


def _discard(snapshot: Path | None) -> None:
    if snapshot is not None:
        shutil.rmtree(snapshot.parent, ignore_errors=True)


def _adopt(config: Config, snapshot: Path | None) -> None:
    if _serving.snapshot is not None:
        _serving.older.append(_serving.snapshot)
    # One older copy stays: a worker forked just before this reload may not have read it yet.
    while len(_serving.older) > 1:
        _discard(_serving.older.pop(0))
    _serving.config = config
    _serving.snapshot = snapshot
    _serving.env = dict(os.environ)


def _ports(binds: list[str]) -> set[int]:
    ports = set()
    for bind in binds:
        try:
            ports.add(int(parse_address(bind)[1]))
        except Exception:  # noqa: BLE001, S112 - not a TCP address (unix:, fd://).
            continue
    return ports


def busy_binds(
    binds: list[str], every_failure: bool = False, own_ports: set[int] = frozenset()
) -> list[str]:
    """One line per TCP address another process already listens on (checked as gunicorn binds:
    IPv6 for an IPv6 literal, else IPv4, with SO_REUSEADDR so a port in TIME_WAIT is free).

    `every_failure`: also any other reason gunicorn could not listen there (an address not on
    this host, a name that does not resolve, no permission), for a reload: gunicorn binds a new
    address before its reload hook runs, and a bind that fails stops its master."""
    problems = []
    for bind in binds:
        if bind.startswith(("unix:", "fd://")):
            continue
        try:
            host, port = parse_address(bind)
            family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
        except Exception as err:  # noqa: BLE001 - gunicorn's parser raises several kinds.
            if every_failure:
                problems.append(f"{bind}: not an address to listen at ({err})")
            continue
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE and port in own_ports:
                # Most likely this server's own listener (127.0.0.1:8080 before 0.0.0.0:8080),
                # which its workers hold while gunicorn binds the new address.
                problems.append(
                    f"{bind} overlaps where this server listens now, which a reload cannot "
                    "move to; restart it to listen there"
                )
            elif err.errno == errno.EADDRINUSE:
                problems.append(f"{bind} is already in use; set PORT or --addr to listen elsewhere")
            elif every_failure:
                problems.append(f"{bind}: cannot listen there ({err.strerror or err})")
            # Otherwise (starting) gunicorn reports it itself.
    return problems


def _fail(problems: list[str]) -> None:
    for problem in problems:
        print(f"ai-proxy: {problem}", file=sys.stderr)
    sys.stderr.flush()
    # gunicorn does not run on_exit for a master that never started.
    on_exit(None)
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
        from . import create_app

        return create_app()
