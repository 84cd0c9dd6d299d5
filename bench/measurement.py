"""The load and chunks parts' measurements: load runs with bench/loadgen.py and stream chunk
delays, with the CPU every party used meanwhile, measured again while other processes on a
shared machine disturbed them; and a record of the machine they ran on."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import loadgen
from common import CLIENT_TOKEN, ROOT, log, request_body
from processes import CLK_TCK, Children, process_cpu

T = TypeVar("T")
# The figures of a point that are the median over its rounds.
MEDIAN_KEYS = (
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
)


def choose_loadgen(choice: str) -> tuple[bool, str]:
    """Whether load runs use wrk (--loadgen wrk, or auto with wrk installed), and its name for
    the report."""
    if choice == "wrk" and not loadgen.wrk_path():
        raise RuntimeError("--loadgen wrk: wrk is not installed (apt-get install -y wrk)")
    use_wrk = choice == "wrk" or (choice == "auto" and bool(loadgen.wrk_path()))
    if use_wrk:
        return True, f"{loadgen.wrk_version()} (1 thread, keep-alive)"
    return False, "Python asyncio load generator (bench/loadgen.py; " + (
        "--loadgen python)" if choice == "python" else "wrk not found)"
    )


def load_once(
    url: str,
    body: bytes,
    conc: int,
    seconds: float,
    workdir: Path,
    children: Children,
    use_wrk: bool | None = None,
    headers: dict[str, str] | None = None,
) -> loadgen.LoadResult:
    """One load run with wrk (by default: if it is installed), else the Python load generator."""
    if use_wrk if use_wrk is not None else loadgen.wrk_path():
        return loadgen.run_wrk(
            url,
            body,
            CLIENT_TOKEN,
            conc,
            max(1, round(seconds)),
            workdir,
            children,
            headers=headers,
        )
    return loadgen.run_python_load(url, body, CLIENT_TOKEN, conc, seconds, headers)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, text=True, capture_output=True, timeout=10
    ).stdout.strip()


def machine_info(loadgen_name: str) -> dict:
    """The machine, the proxy's revision and library versions, for the report's header."""
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
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "app", "conf", "wsgi.py")
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


def quietest(
    args,
    groups: dict[str, int],
    measure: Callable[[int], tuple[T, float]],
    cost: float,
    label: str,
    again: str = "measuring again",
) -> tuple[T, float]:
    """The least disturbed of up to --retries + 1 attempts of `measure(attempt)` (a result and
    the percent of a core other processes took meanwhile): after a quiet spell, measured again
    while others took more than --quiet-threshold and the quiet budget (charged `cost` seconds
    an attempt) lasts. `label` and `again` make the log line of a new attempt."""
    best: tuple[T, float] | None = None
    for attempt in range(args.retries + 1):
        wait_for_quiet(args, groups)
        result, other = measure(attempt)
        if best is None or other < best[1]:
            best = (result, other)
        if other <= args.quiet_threshold or attempt == args.retries or budget_left(args) <= 0:
            break
        args.quiet_spent += cost
        log(f"  {label}: other processes took {other:.0f}% of a core meanwhile; {again}")
    assert best is not None  # at least one attempt ran
    return best


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
    headers: dict[str, str] | None = None,
) -> dict:
    """Warm up, then one measured load run, with the CPU every party used meanwhile; measured
    again (up to --retries times) when other processes took more than --quiet-threshold."""

    def once(seconds: float) -> loadgen.LoadResult:
        return load_once(url, body, conc, seconds, workdir, children, use_wrk, headers)

    def attempt(number: int) -> tuple[dict, float]:
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
            "attempts": number + 1,
        }
        return row, row["other_cpu_pct"]

    cost = args.warmup + args.duration
    return quietest(args, groups, attempt, cost, f"c={conc} {target}")[0]


def measure_streams(
    args, target: str, url: str, groups: dict[str, int], headers: dict[str, str] | None = None
) -> dict:
    """--stream-rounds rounds of --streams concurrent streams; a round during which other
    processes were busy is run again (up to --retries times)."""

    def attempt(_number: int) -> tuple[loadgen.StreamResult, float]:
        watch = CpuWatch(groups).start()
        result = loadgen.measure_streams(
            url,
            request_body(True),
            CLIENT_TOKEN,
            args.streams,
            1,
            args.chunks,
            args.interval,
            headers=headers,
        )
        return result, watch.stop()["other_pct"]

    total = loadgen.StreamResult()
    others = []
    for _ in range(args.stream_rounds):
        cost = args.chunks * args.interval
        result, other = quietest(
            args, groups, attempt, cost, f"streams {target}", "running the round again"
        )
        total.merge(result)
        others.append(other)
    summary = total.summary()
    summary["other_cpu_pct"] = max(others) if others else 0.0
    return summary


def measure_load(
    args,
    urls: dict[str, str],
    groups: dict[str, int],
    use_wrk: bool,
    workdir: Path,
    children: Children,
    headers: dict[str, dict[str, str]] | None = None,
) -> list[dict]:
    """The load part: every concurrency x target, --rounds times; one row (medians) a point."""
    body = request_body(False)
    samples: dict[tuple[int, str], list[dict]] = {}
    for conc in args.concurrency:
        # Rounds interleave the targets, so a slow spell of the machine hits them all alike.
        for round_no in range(args.rounds):
            for target in args.targets:
                row = measure_point(
                    args,
                    target,
                    conc,
                    urls[target],
                    body,
                    use_wrk,
                    workdir,
                    children,
                    groups,
                    (headers or {}).get(target),
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
    return [combine(rows) for rows in samples.values()]


def measure_chunks(
    args,
    urls: dict[str, str],
    groups: dict[str, int],
    headers: dict[str, dict[str, str]] | None = None,
) -> dict[str, dict]:
    """The chunks part: stream time to first byte and chunk delays, per target."""
    streams = {}
    for target in args.targets:
        extra = (headers or {}).get(target)
        streams[target] = s = measure_streams(args, target, urls[target], groups, extra)
        log(
            f"streams {target:<6} ttfb p50 {s['ttfb_p50_ms']:.2f} ms, chunk delay "
            f"p50 {s['delay_p50_ms']:.2f} / p99 {s['delay_p99_ms']:.2f} / "
            f"max {s['delay_max_ms']:.2f} ms, {s['chunks']}/{s['expected_chunks']} chunks, "
            f"{s['failed']} failed, other processes up to {s['other_cpu_pct']:.0f}%"
        )
        if s["problems"]:
            log(f"  {target} stream problems: {s['problems'][:3]}")
    return streams


def median(values: list[float | None]) -> float | None:
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
    for key in MEDIAN_KEYS:
        combined[key] = median([r[key] for r in rows])
    combined["max_ms"] = max(r["max_ms"] for r in rows)
    combined["rps_min"] = min(r["rps"] for r in rows)
    combined["rps_max"] = max(r["rps"] for r in rows)
    for key in ("requests", "errors", "non_2xx"):
        combined[key] = sum(r[key] for r in rows)
    combined["samples"] = rows
    return combined
