"""The benchmark's processes: the fake upstream, the proxy under gunicorn, the bare forwarder and
redis-server, each started on a free loopback port, waited for, watched through /proc and ended
with its whole process group."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from common import (
    BENCH,
    CHAT_PATH,
    CLIENT_TOKEN,
    MODEL,
    PEER_TARGETS,
    QUOTA,
    ROOT,
    UPSTREAM_KEY,
    log,
    request_body,
)

# Variables the proxy reads; none may leak in from the machine running the benchmark.
PROXY_VARS = (
    "AI_PROXY_CONFIG",
    "AI_PROXY_ENV_FILE",
    "AUTH_TOKEN",
    "HOST",
    "PORT",
    "WEB_CONCURRENCY",
    "THREADS",
    "RETRY_MAX_RETRIES",
    "RETRY_BASE_DELAY",
    "RETRY_MAX_DELAY",
    "RETRY_JITTER",
    "RATE_LIMIT_STORAGE",
    "LOG_LEVEL",
    "LOG_FORMAT",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")
AUTOGROUP = Path("/proc/self/autogroup")


class Children:
    """Every process this run starts, each in its own process group so all of it can be ended."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path):
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                process_group=0,
            )
        self.procs.append((name, proc))
        return proc

    def register(self, proc: subprocess.Popen, name: str = "wrk") -> None:
        self.procs.append((name, proc))

    def unregister(self, proc: subprocess.Popen) -> None:
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                self._signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for name, proc in reversed(self.procs):
            # The group may outlive its leader (gunicorn workers): end what is left of it.
            if self._group_alive(proc.pid):
                log(f"{name} did not stop on SIGTERM; killing its process group")
                self._signal(proc, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=5)
        self.procs.clear()

    @staticmethod
    def _signal(proc: subprocess.Popen, signum: int) -> None:
        try:
            os.killpg(proc.pid, signum)  # the group of a child started with process_group=0
        except (ProcessLookupError, PermissionError):
            pass

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return bool(group_pids(pgid))


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat and int(stat[2]) == pgid and stat[0] != "Z":
            pids.append(int(entry))
    return pids


def _read_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # fields from the 3rd (state) on


def process_cpu(pgid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each live process of a group."""
    cpu = {}
    for pid in group_pids(pgid):
        stat = _read_stat(pid)
        if stat:
            cpu[pid] = (int(stat[11]) + int(stat[12])) / CLK_TCK
    return cpu


def _proc_kb_mb(pid: int, name: str, field: str) -> float:
    """A `field:   N kB` line of /proc/<pid>/<name>, in MB (NaN once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def rss_mb(pid: int) -> float:
    """A process's resident memory in MB (NaN once it is gone)."""
    return _proc_kb_mb(pid, "status", "VmRSS:")


def pss_mb(pid: int) -> float:
    """A process's proportional set size in MB: its resident pages, each page it shares with
    other processes counted as its share (a page three processes map counts a third in each).
    NaN once it is gone, or where the kernel has no smaps_rollup (before Linux 4.14)."""
    return _proc_kb_mb(pid, "smaps_rollup", "Pss:")


def group_rss(pgid: int) -> float:
    """Resident memory of a whole server in MB: every live process of its group summed."""
    values = [rss_mb(pid) for pid in group_pids(pgid)]
    return round(sum(v for v in values if v == v), 1)


def group_pss(pgid: int) -> float | None:
    """Proportional memory of a whole server in MB: the group's processes' PSS summed, so pages
    gunicorn's master and workers share (after fork) count once, as one process's would.
    None when it cannot be read."""
    values = [pss_mb(pid) for pid in group_pids(pgid)]
    if not values or any(v != v for v in values):
        return None
    return round(sum(values), 1)


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return sorted(int(pid) for pid in children.read_text().split())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(
    name: str, url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} was not healthy at {url} within {timeout:.0f}s:\n{tail(log_path)}")


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return 0


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env.update(extra)
    return env


def server_env(workers: int, log_level: str, threads: int | None = None) -> dict[str, str]:
    """The gunicorn settings both servers get; THREADS only when set (else the proxy's default)."""
    env = {"WEB_CONCURRENCY": str(workers), "LOG_LEVEL": log_level}
    if threads is not None:
        env["THREADS"] = str(threads)
    return env


# The quota strategy of the generated configs (bench/run.py --quota-strategy); None: the default.
QUOTA_STRATEGY: str | None = None
# Environment variables for the proxy's processes alone (bench/run.py --proxy-env).
PROXY_ENV: dict[str, str] = {}


def proxy_config(upstream_url: str, storage: str = "memory://") -> str:
    """One OpenAI-compatible model on the fake upstream, one client token; quotas on both (set
    too high to refuse anything, but checked and counted on every request like real ones)."""
    return json.dumps(
        {
            "default_model": MODEL,
            "auth": {
                "tokens": [
                    {
                        "name": "bench",
                        "token": CLIENT_TOKEN,
                        "requests_per_minute": QUOTA,
                        "tokens_per_minute": QUOTA * 1000,
                    }
                ]
            },
            "models": [
                {
                    "name": MODEL,
                    "provider": "openai",
                    "base_url": f"{upstream_url}/v1",
                    "token": UPSTREAM_KEY,
                    "model": "bench-upstream",
                    "requests_per_minute": QUOTA,
                }
            ],
            "rate_limits": {
                "storage": storage,
                **({"strategy": QUOTA_STRATEGY} if QUOTA_STRATEGY else {}),
            },
            "routing": {"stream_timeout_seconds": 600},
        },
        indent=2,
    )


def raise_fd_limit() -> None:
    """As many open files as the machine allows (children inherit it): streams hold sockets."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start_redis(children: Children, workdir: Path) -> str | None:
    """A redis-server on a free loopback port, answering PING: its URL (None without one)."""
    binary = shutil.which("redis-server")
    if not binary:
        return None
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    cmd += ["--dir", str(workdir)]
    proc = children.start("redis", cmd, child_env(), workdir / "redis.log")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{tail(workdir / 'redis.log')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not answer PING within 10 s")


def start_upstream(
    children: Children, workdir: Path, name: str, chunks: int, interval: float, procs: int = 1
) -> tuple[str, subprocess.Popen]:
    """bench/upstream.py on a free port, healthy: its URL and process."""
    port = free_port()
    log_path = workdir / f"{name}.log"
    cmd = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)]
    cmd += ["--chunks", str(chunks), "--interval", str(interval), "--procs", str(procs)]
    proc = children.start(name, cmd, child_env(), log_path)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(name, url + "/healthz", proc, log_path)
    return url, proc


def start_server(
    children: Children,
    workdir: Path,
    kind: str,
    upstream: str,
    name: str,
    env: dict[str, str],
    storage: str = "memory://",
) -> tuple[str, subprocess.Popen]:
    """The proxy (as production starts it, with the benchmark's config and quotas in `storage`)
    or the bare forwarder, with every worker up: its base URL and master process."""
    port = free_port()
    log_path = workdir / f"{name}.log"
    common = {"HOST": "127.0.0.1", "PORT": str(port), **env}
    if kind == "proxy":
        config = workdir / f"{name}.yaml"
        config.write_text(proxy_config(upstream, storage))
        cmd = [sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py", "wsgi:app"]
        common["AI_PROXY_CONFIG"] = str(config)
        common.update(PROXY_ENV)
    else:
        cmd = [sys.executable, str(BENCH / "bare.py")]
        common["BARE_UPSTREAM"] = upstream
    proc = children.start(name, cmd, child_env(**common), log_path)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(name, base + "/healthz", proc, log_path)
    # Every worker must be up before memory is read or load is sent.
    deadline = time.monotonic() + 30
    workers = int(env.get("WEB_CONCURRENCY", "1"))
    while len(worker_pids(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    # gthread workers boot on their own; give the last one a moment after it appears.
    time.sleep(1.0)
    return base, proc


@dataclass
class Targets:
    """The load and chunks parts' targets, up and answering."""

    urls: dict[str, str]  # target -> its chat completions URL
    groups: dict[str, int]  # target -> process group, for the CPU it uses
    proxy_log: Path
    # target -> headers its requests carry besides the client token (a peer's routing headers)
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    # peer -> why it is not in this run (it could not be installed or started here)
    skipped: dict[str, str] = field(default_factory=dict)


def start_targets(args, children: Children, workdir: Path) -> Targets:
    """The fake upstream (direct), the proxy with memory:// quotas, proxy-redis when it is asked
    for and redis-server is installed, and the bare forwarder; checked by sanity_check."""
    up_url, upstream = start_upstream(
        children, workdir, "upstream", args.chunks, args.interval, args.upstream_procs
    )
    env = server_env(args.workers, args.log_level, args.threads)
    storages = {"proxy": "memory://"}
    if "proxy-redis" in args.targets:
        redis_url = start_redis(children, workdir)
        if redis_url:
            storages["proxy-redis"] = redis_url
        else:
            log("redis-server is not installed: no proxy-redis target")
    servers = {
        name: start_server(children, workdir, "proxy", up_url, name, env, storage)
        for name, storage in storages.items()
    }
    servers["bare"] = start_server(children, workdir, "bare", up_url, "bare", env)
    urls = {"direct": up_url + CHAT_PATH}
    urls.update({name: base + CHAT_PATH for name, (base, _) in servers.items()})
    groups = {"direct": upstream.pid}
    groups.update({name: proc.pid for name, (_, proc) in servers.items()})
    import peers  # noqa: PLC0415 - peers imports this module

    headers: dict[str, dict[str, str]] = {}
    skipped: dict[str, str] = {}
    for name in (t for t in PEER_TARGETS if t in args.targets):
        try:
            peer = peers.start(name, children, workdir, up_url, args.workers)
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            skipped[name] = f"{type(err).__name__}: {str(err).strip()[:500]}"
            log(f"{name} cannot run here, left out: {skipped[name]}")
            continue
        urls[name], groups[name], headers[name] = peer.url, peer.proc.pid, peer.headers
    sanity_check(urls, headers)
    log(
        "all up: "
        + ", ".join(f"{name} :{url.split(':')[2].split('/')[0]}" for name, url in urls.items())
        + f" (WEB_CONCURRENCY={args.workers}, THREADS={args.threads or 'default'})"
    )
    return Targets(urls, groups, workdir / "proxy.log", headers, skipped)


def sanity_check(urls: dict[str, str], extra: dict[str, dict[str, str]] | None = None) -> None:
    """Every target answers a chat completion; the proxies count quotas (x-ratelimit-* headers)
    and refuse a request without the token."""
    body = request_body(False)
    for name, url in urls.items():
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_TOKEN}"}
        headers.update((extra or {}).get(name, {}))
        response = requests.post(url, data=body, headers=headers, timeout=30)
        if response.status_code != 200 or not response.json().get("choices"):
            raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
        if name.startswith("proxy") and "x-ratelimit-remaining-requests" not in response.headers:
            raise RuntimeError(f"{name}: no x-ratelimit-* headers, so quotas are not on")
    response = requests.post(
        urls["proxy"], data=body, timeout=10, headers={"Content-Type": "application/json"}
    )
    if response.status_code != 401:
        raise RuntimeError(f"proxy without a token answered {response.status_code}, not 401")


def set_niceness(value: int) -> int:
    """Set this process's niceness (children inherit it); the value in force afterwards.

    With the kernel's autogroup scheduling (one group per session), niceness only ranks processes
    within their session, so the session's autogroup gets the same niceness; children stay in
    this session (their own process groups, not sessions) to share it.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError as err:
        log(f"cannot set niceness {value} ({err.strerror}); running at the default")
    set_autogroup_niceness(value)
    return os.getpriority(os.PRIO_PROCESS, 0)


def autogroup_niceness() -> int | None:
    """The niceness of this session's autogroup ("/autogroup-2 nice 0"), if the kernel has one."""
    try:
        return int(AUTOGROUP.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def set_autogroup_niceness(value: int) -> None:
    if autogroup_niceness() is None:
        return
    try:
        AUTOGROUP.write_text(str(value))
    except OSError as err:
        log(f"cannot set the autogroup niceness to {value} ({err.strerror})")
