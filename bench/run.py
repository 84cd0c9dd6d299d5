"""ai-proxy benchmark, every figure in one run: the proxy against a bare Flask forwarder and
the upstream itself.

    .venv/bin/python bench/run.py          # full run (~10 min): docs/benchmarks/results.md + .png
    .venv/bin/python bench/run.py --quick  # ~2 min smoke run: bench/results/quick.md only

It starts, on loopback and free ports:
  * bench/upstream.py, a fake OpenAI upstream (static answers; streams of stamped chunks);
  * the proxy, as in production: `gunicorn -c conf/gunicorn.conf.py wsgi:app`, with a generated
    config (one `openai` model whose base_url is the fake upstream, one client token, quotas on
    both), WEB_CONCURRENCY=2 and the shipped access log; proxy-redis, the same with its quotas
    in a local redis-server (when one is installed);
  * bench/bare.py, a bare Flask + requests forwarder under the same gunicorn settings;
and runs the parts (`--parts`): load (non-streaming throughput and latency with wrk, or a Python
load generator without it, at several concurrencies), chunks (streamed time to first byte and
per-chunk delay), open (1,000 streams held, and in a burst; bench/streams.py), soak (worker
memory over 100,000 requests; bench/streams.py) and quotas (bench/quotas.py). Every child
process is stopped at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS_DIR = BENCH / "results"  # git-ignored: logs, configs, quick-run reports
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks" / "results.md"
CLIENT_TOKEN = "sk-bench-client-token-0123456789"
UPSTREAM_KEY = "sk-bench-upstream-key-0123456789"
MODEL = "bench-model"
# Limits no benchmark reaches, so quotas are checked and counted but never refuse.
QUOTA = 10**9
TARGETS = ("direct", "bare", "proxy", "proxy-redis")
PARTS = ("load", "chunks", "open", "soak", "quotas")
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
GOAL_THROUGHPUT_RATIO = 0.60
GOAL_ADDED_LATENCY_MS = 0.5
GOAL_CHUNK_DELAY_MS = 5.0
GOAL_OPEN_ADDED_TTFB_MS = 50.0
GOAL_WORKER_RSS_MB = 80.0
GOAL_RSS_NOISE_MB = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Child processes


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


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a group."""
    return sum(process_cpu(pgid).values())


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


# ---------------------------------------------------------------------------------------------
# The run


def request_body(stream: bool) -> bytes:
    body: dict = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello to the benchmark."},
        ],
        "max_tokens": 64,
        "temperature": 0.7,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


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
            "rate_limits": {"storage": storage},
            "routing": {"stream_timeout_seconds": 600},
        },
        indent=2,
    )


def raise_fd_limit() -> None:
    """As many open files as the machine allows (children inherit it): streams hold sockets."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def load_once(url: str, body: bytes, conc: int, seconds: float, workdir: Path, children):
    """One load run with wrk if it is installed, else the Python load generator."""
    if loadgen.wrk_path():
        return loadgen.run_wrk(
            url, body, CLIENT_TOKEN, conc, max(1, round(seconds)), workdir, children
        )
    return loadgen.run_python_load(url, body, CLIENT_TOKEN, conc, seconds)


def machine_info(loadgen_name: str) -> dict:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("Flask", "Werkzeug", "gunicorn", "requests", "urllib3", "marshmallow"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "?"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "app", "conf", "wsgi.py"],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=10,
        ).stdout.strip()
        revision = f"{commit}{' + uncommitted changes in app/ or conf/' if dirty else ''}"
    except (OSError, subprocess.TimeoutExpired):
        revision = "?"
    return {
        "revision": revision or "?",
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": cpu_model or platform.processor() or "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "versions": versions,
        "loadgen": loadgen_name,
        "loadavg_at_start": os.getloadavg(),
    }


def start_redis(children: Children, workdir: Path) -> str | None:
    """A redis-server on a free loopback port for the proxy-redis target (None without one)."""
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


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return sorted(int(pid) for pid in children.read_text().split())


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


def sanity_check(urls: dict[str, str]) -> None:
    """Every target answers a chat completion; the proxies count quotas (x-ratelimit-* headers)
    and refuse a request without the token."""
    body = request_body(False)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_TOKEN}"}
    for name, url in urls.items():
        response = requests.post(url, data=body, headers=headers, timeout=10)
        if response.status_code != 200 or not response.json().get("choices"):
            raise RuntimeError(f"{name}: {response.status_code} {response.text[:300]}")
        if name.startswith("proxy") and "x-ratelimit-remaining-requests" not in response.headers:
            raise RuntimeError(f"{name}: no x-ratelimit-* headers, so quotas are not on")
    response = requests.post(
        urls["proxy"], data=body, timeout=10, headers={"Content-Type": "application/json"}
    )
    if response.status_code != 401:
        raise RuntimeError(f"proxy without a token answered {response.status_code}, not 401")


def run(args: argparse.Namespace, children: Children) -> dict:
    workdir = loadgen.scratch_dir(RESULTS_DIR)
    log(f"logs and generated files in {workdir.relative_to(ROOT)}")
    use_wrk = args.loadgen == "wrk" or (args.loadgen == "auto" and loadgen.wrk_path())
    if args.loadgen == "wrk" and not loadgen.wrk_path():
        raise RuntimeError("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    loadgen_name = (
        f"{loadgen.wrk_version()} (1 thread, keep-alive)"
        if use_wrk
        else "Python asyncio load generator (bench/loadgen.py; "
        + ("--loadgen python)" if args.loadgen == "python" else "wrk not found)")
    )
    info = machine_info(loadgen_name)
    log(f"load generator: {loadgen_name}")

    up_url, upstream = start_upstream(
        children, workdir, "upstream", args.chunks, args.interval, args.upstream_procs
    )

    # The proxy, as production starts it (memory:// quotas, and with Redis when it is there).
    common = {"WEB_CONCURRENCY": str(args.workers), "LOG_LEVEL": args.log_level}
    if args.threads is not None:
        common["THREADS"] = str(args.threads)
    storages = {"proxy": "memory://"}
    if "proxy-redis" in args.targets:
        redis_url = start_redis(children, workdir)
        if redis_url:
            storages["proxy-redis"] = redis_url
        else:
            log("redis-server is not installed: no proxy-redis target")
            args.targets = [t for t in args.targets if t != "proxy-redis"]
    servers = {
        name: start_server(children, workdir, "proxy", up_url, name, common, storage)
        for name, storage in storages.items()
    }
    servers["bare"] = start_server(children, workdir, "bare", up_url, "bare", common)
    proxy_log = workdir / "proxy.log"

    path = "/v1/chat/completions"
    urls = {"direct": up_url + path}
    urls.update({name: base + path for name, (base, _) in servers.items()})
    groups = {"direct": upstream.pid}
    groups.update({name: proc.pid for name, (_, proc) in servers.items()})
    sanity_check(urls)
    log(
        "all up: "
        + ", ".join(f"{name} :{url.split(':')[2].split('/')[0]}" for name, url in urls.items())
        + f" (WEB_CONCURRENCY={args.workers}, THREADS={args.threads or 'default'})"
    )

    body = request_body(False)
    samples: dict[tuple[int, str], list[dict]] = {}
    for conc in args.concurrency if "load" in args.parts else ():
        # Rounds interleave the targets, so a slow spell of the machine hits them all alike.
        for round_no in range(args.rounds):
            for target in args.targets:
                row = measure_point(
                    args, target, conc, urls[target], body, use_wrk, workdir, children, groups
                )
                samples.setdefault((conc, target), []).append(row)
                log(
                    f"c={conc:<3} {target:<6} round {round_no + 1}/{args.rounds} "
                    f"{row['rps']:8.0f} req/s  p50 {row['p50_ms']:7.3f} ms  "
                    f"p99 {row['p99_ms']:7.3f} ms  server {row['server_cpu_ms_per_req'] or 0:.2f}"
                    f" ms CPU/req  busiest worker {row['busiest_worker_pct'] or 0:.0f}%  "
                    f"other {row['other_cpu_pct']:.0f}%  errors "
                    f"{row['errors']}+{row['non_2xx']} non-2xx"
                )
    load = [combine(rows) for rows in samples.values()]

    # The streams get a quiet budget of their own: they are short and the most easily disturbed.
    load_quiet_spent, args.quiet_spent = args.quiet_spent, 0.0
    streams = {}
    for target in args.targets if "chunks" in args.parts else ():
        streams[target] = measure_streams(args, target, urls[target], groups)
        s = streams[target]
        log(
            f"streams {target:<6} ttfb p50 {s['ttfb_p50_ms']:.2f} ms, chunk delay "
            f"p50 {s['delay_p50_ms']:.2f} / p99 {s['delay_p99_ms']:.2f} / "
            f"max {s['delay_max_ms']:.2f} ms, {s['chunks']}/{s['expected_chunks']} chunks, "
            f"{s['failed']} failed, other processes up to {s['other_cpu_pct']:.0f}%"
        )
        if s["problems"]:
            log(f"  {target} stream problems: {s['problems'][:3]}")

    # The proxy's log, to show what it wrote per request (its access line is an INFO record).
    proxy_requests = sum(r["requests"] for r in load if r["target"] == "proxy")
    log_lines = count_lines(proxy_log)
    proxy_log_note = (
        f"proxy log: {log_lines} lines for about {proxy_requests} measured "
        "requests plus warm-ups and streams"
    )
    log(proxy_log_note)
    # The other parts start servers of their own; these would only take memory and CPU.
    children.stop_all()
    results = {
        "info": info,
        "workdir": str(workdir),
        "proxy_log": proxy_log_note,
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "threads": args.threads if args.threads is not None else 64,
            "streams": args.streams,
            "stream_rounds": args.stream_rounds,
            "chunks": args.chunks,
            "interval_ms": args.interval * 1000,
            "upstream_procs": args.upstream_procs,
            "log_level": args.log_level,
            "quiet_threshold": args.quiet_threshold,
            "nice": getattr(args, "nice_applied", 0),
            "retries": args.retries,
            "quiet_budget_s": args.quiet_budget,
            "quiet_spent_s": round(load_quiet_spent + args.quiet_spent, 1),
        },
        "load": load,
        "streams": streams,
    }
    # Imported here: both modules import this one.
    import quotas
    import streams as open_streams

    if "open" in args.parts:
        results["open_streams"] = open_streams.open_streams(args, children, workdir)
        children.stop_all()
    if "soak" in args.parts:
        results["soak"] = open_streams.soak(args, children, workdir)
        children.stop_all()
    if "quotas" in args.parts:
        log(f"quota checks: {args.quota_requests} requests per configuration, in process")
        results["quotas"] = quotas.measure_all(args.quota_requests)
    return results


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores, from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in fields[:8])
    # irq and softirq time is left out: loopback traffic of this very benchmark lands there.
    return (user + nice + system) / CLK_TCK, steal / CLK_TCK


class CpuWatch:
    """CPU used over an interval by this benchmark's processes and by everything else."""

    def __init__(self, groups: dict[str, int]) -> None:
        self.groups = groups

    def start(self) -> CpuWatch:
        self.t0 = time.monotonic()
        self.procs0 = {name: process_cpu(pgid) for name, pgid in self.groups.items()}
        self.busy0, self.steal0 = system_cpu()
        self.self0 = os.times()
        self.children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        return self

    def stop(self) -> dict:
        busy, steal = system_cpu()
        wall = max(1e-6, time.monotonic() - self.t0)
        procs = {
            name: {
                pid: cpu - self.procs0[name].get(pid, 0.0) for pid, cpu in process_cpu(pgid).items()
            }
            for name, pgid in self.groups.items()
        }
        groups = {name: sum(per_pid.values()) for name, per_pid in procs.items()}
        now, children = os.times(), resource.getrusage(resource.RUSAGE_CHILDREN)
        mine = (now.user - self.self0.user) + (now.system - self.self0.system)
        # wrk and other short-lived helpers, once reaped.
        mine += (children.ru_utime - self.children0.ru_utime) + (
            children.ru_stime - self.children0.ru_stime
        )
        own = sum(groups.values()) + mine
        return {
            "wall": wall,
            "groups": groups,
            # How evenly the work spread over a group's processes (gunicorn workers).
            "busiest_share": {
                name: max(per_pid.values()) / groups[name] if groups[name] > 0 else None
                for name, per_pid in procs.items()
            },
            # Whatever else ran on the machine meanwhile (other users, the kernel's own work).
            "other_pct": max(0.0, 100 * ((busy - self.busy0) - own) / wall),
            "steal_pct": 100 * (steal - self.steal0) / wall,
        }


def budget_left(args) -> float:
    """Seconds still allowed for waiting on, and re-measuring around, other processes."""
    return max(0.0, args.quiet_budget - args.quiet_spent)


def wait_for_quiet(args, groups: dict[str, int]) -> None:
    """Wait (up to --quiet-wait s) until other processes use less than --quiet-threshold."""
    if budget_left(args) <= 0:
        return
    started = time.monotonic()
    deadline = started + min(args.quiet_wait, budget_left(args))
    waited = False
    while True:
        watch = CpuWatch(groups).start()
        time.sleep(0.5)
        other = watch.stop()["other_pct"]
        if other < args.quiet_threshold:
            if waited:
                args.quiet_spent += time.monotonic() - started
                log(f"  the machine is quiet again (other processes at {other:.0f}%)")
            return
        if time.monotonic() >= deadline:
            args.quiet_spent += time.monotonic() - started
            log(f"  other processes still use {other:.0f}% of a core; measuring anyway")
            return
        if not waited:
            log(
                f"  other processes use {other:.0f}% of a core: waiting up to "
                f"{args.quiet_wait:.0f} s for them to calm down"
            )
            waited = True


def measure_point(
    args,
    target: str,
    conc: int,
    url: str,
    body: bytes,
    use_wrk: bool,
    workdir: Path,
    children: Children,
    groups: dict[str, int],
) -> dict:
    """Warm up, then one measured load run, with the CPU every party used meanwhile; measured
    again (up to --retries times) when other processes took more than --quiet-threshold."""

    def once(seconds: float) -> loadgen.LoadResult:
        if use_wrk:
            return loadgen.run_wrk(
                url, body, CLIENT_TOKEN, conc, max(1, round(seconds)), workdir, children
            )
        return loadgen.run_python_load(url, body, CLIENT_TOKEN, conc, seconds)

    best = None
    for attempt in range(args.retries + 1):
        wait_for_quiet(args, groups)
        once(args.warmup)
        watch = CpuWatch(groups).start()
        result = once(args.duration)
        cpu = watch.stop()
        wall = result.duration_s or cpu["wall"]
        server = cpu["groups"][target] if target != "direct" else None
        row = {
            "target": target,
            "concurrency": conc,
            **vars(result),
            "server_cpu_pct": 100 * server / wall if server is not None else None,
            "server_cpu_ms_per_req": 1000 * server / result.requests
            if server is not None and result.requests
            else None,
            "busiest_worker_pct": 100 * cpu["busiest_share"][target]
            if target != "direct" and cpu["busiest_share"][target] is not None
            else None,
            "upstream_cpu_pct": 100 * cpu["groups"]["direct"] / wall,
            "loadgen_cpu_pct": 100 * result.loadgen_cpu_s / wall,
            "other_cpu_pct": cpu["other_pct"],
            "steal_pct": cpu["steal_pct"],
            "attempts": attempt + 1,
        }
        if best is None or row["other_cpu_pct"] < best["other_cpu_pct"]:
            best = row
        if row["other_cpu_pct"] <= args.quiet_threshold:
            break
        if attempt < args.retries and budget_left(args) > 0:
            args.quiet_spent += args.warmup + args.duration
            log(
                f"  c={conc} {target}: other processes took {row['other_cpu_pct']:.0f}% of a "
                "core meanwhile; measuring again"
            )
        else:
            break
    return best


def measure_streams(args, target: str, url: str, groups: dict[str, int]) -> dict:
    """--stream-rounds rounds of --streams concurrent streams; a round during which other
    processes were busy is run again (up to --retries times)."""
    total = loadgen.StreamResult()
    others = []
    for _ in range(args.stream_rounds):
        best = None
        for attempt in range(args.retries + 1):
            wait_for_quiet(args, groups)
            watch = CpuWatch(groups).start()
            result = loadgen.measure_streams(
                url, request_body(True), CLIENT_TOKEN, args.streams, 1, args.chunks, args.interval
            )
            other = watch.stop()["other_pct"]
            if best is None or other < best[1]:
                best = (result, other)
            if other <= args.quiet_threshold:
                break
            if attempt < args.retries and budget_left(args) > 0:
                args.quiet_spent += args.chunks * args.interval
                log(
                    f"  streams {target}: other processes took {other:.0f}% of a core "
                    "meanwhile; running the round again"
                )
            else:
                break
        total.merge(best[0])
        others.append(best[1])
    summary = total.summary()
    summary["other_cpu_pct"] = max(others) if others else 0.0
    return summary


def _median(values: list[float | None]) -> float | None:
    present = sorted(v for v in values if v is not None and not math.isnan(v))
    if not present:
        return None
    mid = len(present) // 2
    return present[mid] if len(present) % 2 else (present[mid - 1] + present[mid]) / 2


def combine(rows: list[dict]) -> dict:
    """One row from the rounds of a point: medians, the rps range, summed errors."""
    first = rows[0]
    combined = {
        "target": first["target"],
        "concurrency": first["concurrency"],
        "tool": first["tool"],
        "rounds": len(rows),
    }
    for key in (
        "rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "server_cpu_pct",
        "server_cpu_ms_per_req",
        "busiest_worker_pct",
        "upstream_cpu_pct",
        "loadgen_cpu_pct",
        "other_cpu_pct",
        "steal_pct",
    ):
        combined[key] = _median([r[key] for r in rows])
    combined["max_ms"] = max(r["max_ms"] for r in rows)
    combined["rps_min"] = min(r["rps"] for r in rows)
    combined["rps_max"] = max(r["rps"] for r in rows)
    combined["requests"] = sum(r["requests"] for r in rows)
    combined["errors"] = sum(r["errors"] for r in rows)
    combined["non_2xx"] = sum(r["non_2xx"] for r in rows)
    combined["samples"] = rows
    return combined


# ---------------------------------------------------------------------------------------------
# Goals and the report


def _find(load: list[dict], target: str, conc: int) -> dict | None:
    return next((r for r in load if r["target"] == target and r["concurrency"] == conc), None)


def evaluate(results: dict) -> list[dict]:
    load, streams = results["load"], results["streams"]
    workers = results["settings"]["workers"]
    goals = []

    def goal(text: str, measured: str, passed: bool | None) -> None:
        goals.append({"goal": text, "measured": measured, "pass": passed})

    bare16, proxy16 = _find(load, "bare", 16), _find(load, "proxy", 16)
    if bare16 and proxy16 and bare16["rps"]:
        ratio = proxy16["rps"] / bare16["rps"]
        goal(
            f"proxy throughput >= {GOAL_THROUGHPUT_RATIO:.0%} of bare at concurrency 16 "
            f"({workers} workers)",
            f"{ratio:.0%} ({proxy16['rps']:.0f} vs {bare16['rps']:.0f} req/s)",
            ratio >= GOAL_THROUGHPUT_RATIO,
        )
    bare1, proxy1 = _find(load, "bare", 1), _find(load, "proxy", 1)
    if bare1 and proxy1:
        added = proxy1["p50_ms"] - bare1["p50_ms"]
        goal(
            f"median added latency at concurrency 1 within {GOAL_ADDED_LATENCY_MS} ms of bare",
            f"{added:+.3f} ms (p50 {proxy1['p50_ms']:.3f} vs {bare1['p50_ms']:.3f} ms)",
            added <= GOAL_ADDED_LATENCY_MS,
        )
    if "proxy" in streams:
        s = streams["proxy"]
        complete = s["failed"] == 0 and s["chunks"] == s["expected_chunks"]
        context = (
            f"; first chunks max {s['first_delay_max_ms']:.2f} ms, later chunks max "
            f"{s['later_delay_max_ms']:.2f} ms"
        )
        if "bare" in streams:
            context += f"; bare: max {streams['bare']['delay_max_ms']:.2f} ms"
        goal(
            f"each stream chunk reaches the client within {GOAL_CHUNK_DELAY_MS:.0f} ms of "
            "leaving the upstream",
            f"max {s['delay_max_ms']:.2f} ms, p99 {s['delay_p99_ms']:.2f} ms "
            f"({s['chunks']}/{s['expected_chunks']} chunks, {s['failed']} failed{context})",
            complete and s["delay_max_ms"] <= GOAL_CHUNK_DELAY_MS,
        )
    opened = results.get("open_streams")
    if opened and "held" in opened["runs"]:
        held = opened["runs"]["held"]
        direct, proxy = held["direct"], held["proxy"]
        added = proxy["ttfb_p99_ms"] - direct["ttfb_p99_ms"]
        complete = proxy["failed"] == 0 and proxy["chunks"] == proxy["expected_chunks"]
        goal(
            f"{opened['streams']} concurrent streams of {opened['seconds']} s held on one host "
            f"({opened['workers']} workers), all completed, added p99 time to first byte under "
            f"{GOAL_OPEN_ADDED_TTFB_MS:.0f} ms",
            f"{proxy['streams'] - proxy['failed']}/{proxy['streams']} completed, peak "
            f"{proxy['peak_open']} open, {proxy['chunks']}/{proxy['expected_chunks']} chunks; "
            f"TTFB p99 {proxy['ttfb_p99_ms']:.1f} vs {direct['ttfb_p99_ms']:.1f} ms direct: "
            f"{added:+.1f} ms",
            complete
            and proxy["peak_open"] >= opened["streams"]
            and added < GOAL_OPEN_ADDED_TTFB_MS,
        )
    if opened and "burst" in opened["runs"]:
        burst = opened["runs"]["burst"]
        direct, bare, proxy = burst["direct"], burst["bare"], burst["proxy"]
        goal(
            f"(for comparison, not a goal) the same {opened['streams']} streams opened within "
            f"{opened['spreads']['burst']:g} s",
            f"added TTFB p99: proxy {proxy['ttfb_p99_ms'] - direct['ttfb_p99_ms']:+.1f} ms, "
            f"bare forwarder {bare['ttfb_p99_ms'] - direct['ttfb_p99_ms']:+.1f} ms; "
            f"{proxy['streams'] - proxy['failed']}/{proxy['streams']} completed",
            None,
        )
    soaked = results.get("soak")
    if soaked:
        samples = soaked["samples"]
        first, last = samples[0]["rss"], samples[-1]["rss"]
        # Quota windows fill up first (a per-minute moving window keeps an entry per request
        # for a minute): growth is judged over the second half, once they are full.
        middle = next(x for x in samples if x["requests"] >= soaked["requests"] / 2)
        growth = max(b - a for a, b in zip(middle["rss"], last, strict=True))
        goal(
            f"per-worker memory under {GOAL_WORKER_RSS_MB:.0f} MB after {soaked['requests']} "
            f"requests, no growth beyond noise ({GOAL_RSS_NOISE_MB:g} MB) over the second half",
            f"{', '.join(f'{v:.1f}' for v in first)} MB at rest, "
            f"{', '.join(f'{v:.1f}' for v in last)} MB after; {growth:+.1f} MB from request "
            f"{middle['requests']} to the end; {soaked['errors']} errors",
            max(last) < GOAL_WORKER_RSS_MB and growth < GOAL_RSS_NOISE_MB and soaked["errors"] == 0,
        )
    return goals


def _ms(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}%"


def render(results: dict, goals: list[dict], command: str) -> str:
    info, settings = results["info"], results["settings"]
    load, streams = results["load"], results["streams"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [
        "# ai-proxy benchmark results",
        "",
        f"- **Command:** `{command}`",
        f"- **Date:** {results['date']}; proxy code at git {info['revision']}",
        f"- **Machine:** nproc={info['nproc']} ({info['cpu_model']}), Linux {info['kernel']}, "
        f"{info['python_impl']} {info['python']}; {versions}",
        f"- **Load generator:** {info['loadgen']}. It, the fake upstream, the bare forwarder and "
        f"the proxy all share the same {info['nproc']} cores, so absolute numbers are low and "
        "the comparison between rows is what counts.",
        f"- **Servers:** proxy = `gunicorn -c conf/gunicorn.conf.py wsgi:app` (gthread, "
        f"WEB_CONCURRENCY={settings['workers']}, THREADS={settings['threads']}, auth on, "
        "quotas on for the client token and the deployment (`requests_per_minute`, "
        "`tokens_per_minute`: counted on every request, never reached), metrics on, "
        f"LOG_LEVEL={settings['log_level']}, {results['proxy_log']}); proxy-redis = the same "
        "with its quotas in a local redis-server; bare = `bench/bare.py` "
        "(Flask + one requests.Session) under the same gunicorn options; direct = the client "
        f"straight to the fake upstream (`bench/upstream.py`, asyncio, "
        f"{settings['upstream_procs']} process).",
        f"- **Per point:** {settings['rounds']} round(s), interleaved across targets, of "
        f"{settings['warmup_s']:g} s warm-up + {settings['duration_s']:g} s measured; the tables "
        "give the median over rounds. Every process of the run has niceness "
        f"{settings['nice']}, to be disturbed less by other work on a shared machine. "
        "Before each measurement the run waits for other processes "
        f"to use under {settings['quiet_threshold']:.0f}% of a core, and measures again (up to "
        f"{settings['retries']} times) when they took more meanwhile (this run spent "
        f"{settings['quiet_spent_s']:.0f} s so). POST /v1/chat/completions, "
        "non-streaming, keep-alive connections.",
        "",
        "## Goals",
        "",
        "| goal | measured | result |",
        "| --- | --- | --- |",
    ]
    for goal in goals:
        lines.append(
            f"| {goal['goal']} | {goal['measured']} | "
            f"{'–' if goal['pass'] is None else '**PASS**' if goal['pass'] else '**MISS**'} |"
        )
    limit = settings["quiet_threshold"]
    busy = [r for r in load if (r["other_cpu_pct"] or 0) > limit]
    busy += [s for s in streams.values() if (s.get("other_cpu_pct") or 0) > limit]
    if busy:
        lines += [
            "",
            f"> **Note:** even after waiting and {settings['retries']} retries, processes outside "
            f"this benchmark took more than {limit:.0f}% of a core during {len(busy)} "
            "measurement(s) (see the *other CPU* columns): those numbers are noisier.",
        ]
    lines += [
        "",
        "## Non-streaming throughput and latency",
        "",
        "CPU columns are percent of one core over the measured interval (the machine has "
        f"{info['nproc'] * 100}%); *CPU/req* is the server's (all its gunicorn processes') CPU "
        "time per request; *busiest worker* is the share of that CPU spent by the busiest "
        f"process of the server (with {settings['workers']} workers, "
        f"{100 / settings['workers']:.0f}% is an even spread; gunicorn does not balance "
        "keep-alive connections, so one worker can end up with most of them); *other* is CPU "
        "used meanwhile by processes outside this benchmark.",
        "",
        "| concurrency | target | req/s | req/s range | p50 ms | p90 ms | p99 ms | errors | "
        "server CPU | CPU/req ms | busiest worker | upstream CPU | load-gen CPU | other CPU | "
        "vs bare |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for row in load:
        bare = _find(load, "bare", row["concurrency"])
        rel = f"{row['rps'] / bare['rps']:.0%}" if bare and bare["rps"] else "–"
        lines.append(
            f"| {row['concurrency']} | {row['target']} | {row['rps']:.0f} | "
            f"{row['rps_min']:.0f}–{row['rps_max']:.0f} | {_ms(row['p50_ms'], 3)}"
            f" | {_ms(row['p90_ms'], 3)} | {_ms(row['p99_ms'], 3)} | "
            f"{row['errors'] + row['non_2xx']} | {_pct(row['server_cpu_pct'])} | "
            f"{_ms(row['server_cpu_ms_per_req'], 2)} | {_pct(row['busiest_worker_pct'])} | "
            f"{_pct(row['upstream_cpu_pct'])} | "
            f"{_pct(row['loadgen_cpu_pct'])} | {_pct(row['other_cpu_pct'])} | {rel} |"
        )
    direct1, bare1, proxy1 = (_find(load, t, 1) for t in ("direct", "bare", "proxy"))
    lines += ["", "## Added latency at concurrency 1 (median)", ""]
    if bare1 and direct1:
        lines.append(
            f"- bare − direct: **{bare1['p50_ms'] - direct1['p50_ms']:+.3f} ms** "
            "(what a minimal Flask + requests hop costs)"
        )
    if proxy1 and bare1:
        lines.append(
            f"- proxy − bare: **{proxy1['p50_ms'] - bare1['p50_ms']:+.3f} ms** "
            "(what the proxy's own work costs per request)"
        )
    if proxy1 and direct1:
        lines.append(f"- proxy − direct: {proxy1['p50_ms'] - direct1['p50_ms']:+.3f} ms")
    if streams:
        lines += [
            "",
            "## Streaming",
            "",
            f"{settings['streams']} concurrent streams (starts spread over one chunk interval) "
            f"× {settings['stream_rounds']} round(s); the upstream sends {settings['chunks']} "
            f"content chunks {settings['interval_ms']:.0f} ms apart, each stamped with its send "
            "time. TTFB = request sent → first SSE event received. Chunk delay = client receive "
            "time − upstream send time, for every content chunk (the direct row is the "
            "measuring floor). The first chunk's delay also holds the server's set-up of the "
            "answer (routing headers, after-request hooks, the response start), so it is shown "
            "apart from the later chunks', which are the relay alone.",
            "",
            "| target | streams | TTFB p50 ms | TTFB p99 ms | delay p50 ms | delay p99 ms | "
            "delay max ms | 1st chunk p50 / max ms | later chunks p99 / max ms | chunks | failed | "
            "other CPU |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    for target, s in streams.items():
        lines.append(
            f"| {target} | {s['streams']} | {_ms(s['ttfb_p50_ms'])} | {_ms(s['ttfb_p99_ms'])} | "
            f"{_ms(s['delay_p50_ms'], 3)} | {_ms(s['delay_p99_ms'], 3)} | "
            f"{_ms(s['delay_max_ms'], 3)} | {_ms(s['first_delay_p50_ms'])} / "
            f"{_ms(s['first_delay_max_ms'])} | {_ms(s['later_delay_p99_ms'])} / "
            f"{_ms(s['later_delay_max_ms'])} | {s['chunks']}/{s['expected_chunks']} | "
            f"{s['failed']} | {_pct(s.get('other_cpu_pct'))} |"
        )
    import quotas
    import streams as open_streams

    lines += [""] + open_streams.render(results.get("open_streams"), results.get("soak"))
    proxy_mem, proxy_redis = (_find(load, t, 1) for t in ("proxy", "proxy-redis"))
    if results.get("quotas") or (proxy_mem and proxy_redis):
        lines += ["## Quota cost", ""]
    if proxy_mem and proxy_redis:
        lines += [
            "End to end, concurrency 1 (the same proxy and quotas; only the storage differs): "
            f"p50 {proxy_mem['p50_ms']:.3f} ms with memory://, {proxy_redis['p50_ms']:.3f} ms "
            f"with a local redis-server: **{proxy_redis['p50_ms'] - proxy_mem['p50_ms']:+.3f} "
            "ms** for Redis.",
            "",
        ]
    if results.get("quotas"):
        lines += [
            "In process (`bench/quotas.py`): *typical* = `requests_per_minute` on the client "
            "token and on the deployment; *full* = request, token and budget limits on the "
            "token, request and token limits on the deployment. Admission runs before the "
            "upstream call (client and deployment checks and the `x-ratelimit-*` window); the "
            "charge runs after the answer has been sent, so it adds nothing to the latency a "
            "client sees.",
            "",
            *quotas.render(results["quotas"]),
            "",
        ]
    if results.get("plot"):
        lines += ["", f"![throughput, latency and memory]({results['plot']})"]
    lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> bool:
    """A PNG of req/s and p50 per concurrency, open-stream TTFB and soak memory, if matplotlib is
    installed (bench/requirements)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install -r bench/requirements.txt): no plot")
        return False
    load = results["load"]
    concs = sorted({r["concurrency"] for r in load})
    targets = [t for t in TARGETS if any(r["target"] == t for r in load)]
    opened, soaked = results.get("open_streams"), results.get("soak")
    panels = 2 + bool(opened) + bool(soaked)
    rows = 1 if panels <= 2 else 2
    fig, grid = plt.subplots(rows, 2, figsize=(11, 4 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for unused in axes[panels:]:
        unused.set_visible(False)
    # direct is 10-50x faster than either server: it would flatten the throughput bars.
    bar_panels = (
        ("throughput (req/s; direct left out)", "rps", [t for t in targets if t != "direct"]),
        ("p50 latency (ms, log scale)", "p50_ms", targets),
    )
    for ax, (title, key, shown) in zip(axes[:2], bar_panels, strict=True):
        width = 0.8 / max(1, len(shown))
        for i, target in enumerate(shown):
            xs = [c_i + i * width for c_i in range(len(concs))]
            values = [(_find(load, target, c) or {}).get(key) or 0 for c in concs]
            ax.bar(xs, values, width, label=target, color=f"C{TARGETS.index(target)}")
        ax.set_xticks([c_i + width * (len(shown) - 1) / 2 for c_i in range(len(concs))])
        ax.set_xticklabels([f"c={c}" for c in concs])
        ax.set_title(title)
        ax.legend()
    axes[1].set_yscale("log")
    rest = axes[2:]
    if opened:
        ax = rest.pop(0)
        patterns = list(opened["runs"])
        shown = ["direct", "bare", "proxy"]
        width = 0.8 / len(shown)
        for i, target in enumerate(shown):
            xs = [k + i * width for k in range(len(patterns))]
            values = [opened["runs"][pat][target]["ttfb_p99_ms"] for pat in patterns]
            ax.bar(xs, values, width, label=target, color=f"C{TARGETS.index(target)}")
        ax.set_xticks([k + width for k in range(len(patterns))])
        ax.set_xticklabels(patterns)
        ax.set_yscale("log")
        ax.set_title(f"{opened['streams']} open streams: TTFB p99 (ms, log)")
        ax.legend()
    if soaked:
        ax = rest.pop(0)
        xs = [sample["requests"] / 1000 for sample in soaked["samples"]]
        for worker in range(len(soaked["samples"][0]["rss"])):
            ax.plot(
                xs,
                [sample["rss"][worker] for sample in soaked["samples"]],
                marker="o",
                label=f"worker {worker + 1}",
            )
        ax.axhline(GOAL_WORKER_RSS_MB, color="grey", linestyle="--", label="goal")
        ax.set_ylim(0, GOAL_WORKER_RSS_MB * 1.2)
        ax.set_xlabel("thousands of requests")
        ax.set_title("proxy RSS per worker under a soak (MB)")
        ax.legend()
    fig.suptitle(f"ai-proxy vs bare forwarder vs direct — {results['date']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark ai-proxy against a bare forwarder.")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short points, one stream round, 100 open streams, a 5k soak (~2 min); "
        "report under bench/results/",
    )
    parser.add_argument(
        "--duration", type=float, help="measured seconds per point and round (default 5, quick 3)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="interleaved rounds per point, medians reported (default 3, quick 1)",
    )
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per point")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated connections")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help="comma-separated parts to run: load (throughput and latency), chunks (stream chunk "
        "delays), open (many open streams), soak (memory over many requests), quotas (quota "
        "check cost); default all",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="of direct,bare,proxy,proxy-redis (proxy-redis: quotas in a local redis-server)",
    )
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY for both servers")
    parser.add_argument(
        "--threads", type=int, help="THREADS for both servers (default: the proxy's default)"
    )
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams")
    parser.add_argument("--stream-rounds", type=int, help="rounds of streams (default 3, quick 1)")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument(
        "--open-streams", type=int, help="streams held at once in the open part (default 1000)"
    )
    parser.add_argument(
        "--open-seconds", type=int, help="length of each open stream, s (default 20)"
    )
    parser.add_argument(
        "--soak-requests", type=int, help="requests in the memory soak (default 100000)"
    )
    parser.add_argument(
        "--quota-requests", type=int, help="requests per quota configuration (default 5000)"
    )
    parser.add_argument("--upstream-procs", type=int, default=1, help="fake upstream processes")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--quiet-threshold",
        type=float,
        default=20.0,
        help="percent of a core other processes may use while measuring; above "
        "it, wait before a point and measure it again (default 20)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait for a quiet machine before each point (default 30, quick 2)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        help="extra attempts at a point disturbed by other processes (default 2, quick 0)",
    )
    parser.add_argument(
        "--quiet-budget",
        type=float,
        help="seconds the run may spend in all waiting for, or re-measuring because of, other "
        "processes: once for the non-streaming points, once more for the streams (default 240, "
        "quick 5)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="LOG_LEVEL for both servers "
        "(default INFO, as shipped: the proxy's per-request access line is an "
        "INFO record, so WARNING would switch it off)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="Markdown report (default "
        "docs/benchmarks/results.md; with --quick, bench/results/quick.md)",
    )
    parser.add_argument(
        "--no-plot", action="store_true", help="skip the PNG even if matplotlib is installed"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness for this run and every process it starts (inherited), so that other "
        "work on a shared machine disturbs the measurement less; needs root below 0, "
        "falls back to 0 (default -10)",
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (3.0 if args.quick else 5.0)
    args.rounds = max(1, args.rounds or (1 if args.quick else 3))
    args.quiet_wait = (
        args.quiet_wait if args.quiet_wait is not None else (2.0 if args.quick else 30.0)
    )
    args.retries = args.retries if args.retries is not None else (0 if args.quick else 2)
    args.quiet_budget = (
        args.quiet_budget if args.quiet_budget is not None else (5.0 if args.quick else 240.0)
    )
    args.quiet_spent = 0.0
    args.stream_rounds = args.stream_rounds or (1 if args.quick else 3)
    args.open_streams = args.open_streams or (100 if args.quick else 1000)
    args.open_seconds = args.open_seconds or (6 if args.quick else 20)
    args.soak_requests = args.soak_requests or (5000 if args.quick else 100_000)
    args.quota_requests = args.quota_requests or (500 if args.quick else 5000)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(set(args.parts) - set(PARTS)))}")
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.output is None:
        args.output = RESULTS_DIR / "quick.md" if args.quick else DEFAULT_OUTPUT
    return args


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


AUTOGROUP = Path("/proc/self/autogroup")


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


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    command = ".venv/bin/python bench/run.py" + (
        " " + shlex.join(sys.argv[1:] if argv is None else argv)
        if (sys.argv[1:] if argv is None else argv)
        else ""
    )
    # SIGINT too: a shell starts background jobs with it ignored, and Ctrl-C must still work.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    # The session's autogroup outlives this run: its niceness is put back at the end.
    autogroup_before = autogroup_niceness()
    args.nice_applied = set_niceness(args.nice)
    children = Children()
    started = time.monotonic()
    try:
        results = run(args, children)
    except KeyboardInterrupt:
        log("interrupted: stopping every process this run started")
        return 130
    except Exception as err:  # noqa: BLE001 - report, clean up, exit non-zero
        log(f"benchmark failed: {type(err).__name__}: {err}")
        return 1
    finally:
        # A second Ctrl-C must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        children.stop_all()
        if autogroup_before is not None:
            set_autogroup_niceness(autogroup_before)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    results["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    goals = evaluate(results)
    results["goals"] = goals
    # Every sample, kept before anything below can fail.
    Path(results["workdir"], "results.json").write_text(json.dumps(results, indent=2))
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    png = output.with_suffix(".png")
    if not args.no_plot and plot(results, png):
        results["plot"] = png.name
    report = render(results, goals, command)
    output.write_text(report)
    print(report)
    where = output.relative_to(ROOT) if output.is_relative_to(ROOT) else output
    log(f"done in {results['elapsed_s']:.0f} s; report written to {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
