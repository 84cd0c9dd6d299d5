"""Where a request's time goes in the proxy (or the bare forwarder): py-spy on the live workers.

    pip install -r bench/requirements.txt          # py-spy
    .venv/bin/python bench/profile.py [--target proxy|bare] [--concurrency 1] [--duration 10]

Starts the fake upstream and the target exactly as bench/run.py does, drives it with wrk, and
samples every gunicorn worker with `py-spy record --gil` (only the thread holding the GIL, i.e.
Python doing work). Prints, per function, the sampled GIL time per request (inclusive and self),
with the functions of app/ marked, plus a summary by area (gunicorn, Flask, requests, app, ...).
py-spy slows the workers a little; compare functions, not the absolute total, with run.py.

    .venv/bin/python bench/profile.py --cprofile [--requests 3000]

runs the proxy's WSGI app in this process instead, with every feature on as bench/run.py
configures it (client token, per-token and per-model `requests_per_minute` and
`tokens_per_minute`, Prometheus multiprocess metrics, the JSON access log, written to /dev/null)
against the same fake upstream, one request at a time, under cProfile: the CPU per request by
area and the functions costing most (gunicorn's own HTTP work is not in it).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inprocess  # noqa: E402
import loadgen  # noqa: E402
import processes  # noqa: E402
import run  # noqa: E402
from common import CHAT_PATH, CLIENT_TOKEN, RESULTS_DIR, ROOT, request_body  # noqa: E402

FRAME_RE = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
LOGGING = ("logging (access log)", ("logging/", "gunicorn/glogging.py", "app/logs.py"))
AREAS = (
    LOGGING,
    ("app/ (the proxy's own code)", ("app/",)),
    ("marshmallow (app/schemas.py validation)", ("marshmallow/",)),
    (
        "requests/urllib3/http.client (upstream call)",
        ("requests/", "urllib3/", "http/client.py", "email/", "socket.py", "ssl.py"),
    ),
    ("flask/werkzeug", ("flask/", "werkzeug/")),
    ("prometheus_client (metrics)", ("prometheus_client/",)),
    ("limits (rate limiting)", ("limits/",)),
    ("opentelemetry (tracing)", ("opentelemetry/",)),
    ("gunicorn (HTTP parsing, gthread)", ("gunicorn/",)),
)
OTHER = "stdlib called from elsewhere"


def area_of(path: str) -> str:
    for name, needles in AREAS:
        if any(path.startswith(n) or "/" + n in path for n in needles):
            return name
    return OTHER


def area_of_stack(paths: list[str]) -> str:
    """Logging wherever it is called from; else the innermost frame's area, stdlib code (json,
    threading, ...) counting for the library or app code that called it."""
    areas = [area_of(path) for path in paths]
    if LOGGING[0] in areas:
        return LOGGING[0]
    return next((area for area in reversed(areas) if area != OTHER), OTHER)


def parse_frame(frame: str) -> tuple[str, str]:
    match = FRAME_RE.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match.group("func"), match.group("file")


def short(path: str) -> str:
    root = str(ROOT) + "/"
    if path.startswith(root):
        return path[len(root) :]
    return re.sub(r"^.*/(site-packages|lib/python3\.\d+)/", "", path)


def analyse(raw: Path, rate: int, requests: int, top: int) -> str:
    inclusive: collections.Counter = collections.Counter()
    self_time: collections.Counter = collections.Counter()
    areas: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [parse_frame(f) for f in stack.split(";")]
        frames = [(func, path) for func, path in frames if path]  # drop process/thread labels
        if not frames:
            continue
        seen = set()
        for func, path in frames:
            key = (func, short(path))
            if key not in seen:
                inclusive[key] += n
                seen.add(key)
        leaf_func, leaf_path = frames[-1]
        self_time[(leaf_func, short(leaf_path))] += n
        areas[area_of_stack([path for _, path in frames])] += n

    def ms(samples: int) -> float:
        return 1000 * samples / rate / max(1, requests)

    out = [
        f"{total} GIL samples at {rate} Hz over {requests} requests: "
        f"{ms(total):.3f} ms of Python (GIL held) per request, as sampled",
        "",
        "By area (innermost frame; stdlib code counts for the library or app code calling it):",
    ]
    for name, n in areas.most_common():
        out.append(f"  {ms(n):7.3f} ms/req  {100 * n / total:5.1f}%  {name}")
    out += ["", f"Top {top} functions by inclusive time (* = app/):"]
    for (func, path), n in inclusive.most_common(top):
        mark = "*" if path.startswith("app/") else " "
        out.append(f"  {ms(n):7.3f} ms/req  {100 * n / total:5.1f}% {mark} {func} ({path})")
    out += ["", "Functions of app/ by inclusive time:"]
    for (func, path), n in inclusive.most_common():
        if path.startswith("app/"):
            out.append(f"  {ms(n):7.3f} ms/req  {100 * n / total:5.1f}%  {func} ({path})")
    out += ["", f"Top {top} by self time:"]
    for (func, path), n in self_time.most_common(top):
        out.append(f"  {ms(n):7.3f} ms/req  {100 * n / total:5.1f}%  {func} ({path})")
    return "\n".join(out)


def cprofile_main(args) -> int:
    """The proxy's WSGI app in this process under cProfile (see the module docstring)."""
    # This file is named like the standard library's `profile`, which cProfile imports.
    bench_dir = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p not in (bench_dir, "")]
    import cProfile
    import pstats

    sys.path.insert(0, bench_dir)

    children = processes.Children()
    workdir = loadgen.scratch_dir(RESULTS_DIR)
    try:
        app, environ, body = inprocess.load_app(
            args.target, children, workdir, args.storage, args.cache, args.stream, args.chunks
        )
        for _ in range(500):
            assert inprocess.wsgi_request(app, environ, body) == 200
        # The least of a few timings: the machine is shared, and others' work only adds.
        timings = []
        for _ in range(args.repeat):
            started = time.process_time()
            for _ in range(args.requests):
                inprocess.wsgi_request(app, environ, body)
            timings.append((time.process_time() - started) / args.requests)
        plain = min(timings)
        # CPU time, not wall time: waiting for the upstream is not the proxy's cost.
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        for _ in range(args.requests):
            inprocess.wsgi_request(app, environ, body)
        profiler.disable()
        print(
            f"{args.target} in process, every feature on, "
            f"{f'streamed answers of {args.chunks} chunks' if args.stream else 'whole answers'}"
            f"{', cache hits' if args.cache else ''}: "
            f"{plain * 1e6:.0f} us CPU per request "
            f"without the profiler, least of {args.repeat} runs of {args.requests} requests "
            f"({' '.join(f'{t * 1e6:.0f}' for t in timings)}; gunicorn's part not included)\n"
        )
        dump = workdir / f"{args.target}.prof"
        profiler.dump_stats(dump)
        print(f"raw profile (pstats): {dump.relative_to(ROOT)}")
        stats = pstats.Stats(profiler)
        print(cprofile_areas(stats, args.requests))
        stats.sort_stats("tottime").print_stats(args.top)
    finally:
        children.stop_all()
    return 0


def cprofile_areas(stats, requests: int) -> str:
    """Self time per request by area (the file each function is in), most first."""
    totals: dict[str, float] = collections.Counter()
    for (path, _line, _func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():
        totals[area_of(path)] += tottime
    total = sum(totals.values()) or 1.0
    lines = ["self time per request by area (under cProfile, which inflates it):"]
    for area, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {seconds / requests * 1e6:8.1f} us  {100 * seconds / total:5.1f}%  {area}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--target", choices=("proxy", "bare"), default="proxy")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=35)
    # The venv's own py-spy when the venv is not on PATH (.venv/bin/python bench/profile.py).
    beside = Path(sys.executable).with_name("py-spy")
    parser.add_argument("--py-spy", default=shutil.which("py-spy") or str(beside))
    parser.add_argument(
        "--cprofile", action="store_true", help="the app in this process under cProfile"
    )
    parser.add_argument("--requests", type=int, default=3000, help="requests for --cprofile")
    parser.add_argument(
        "--stream", action="store_true", help="--cprofile: streamed requests (set-up and relay)"
    )
    parser.add_argument(
        "--chunks", type=int, default=1, help="--cprofile --stream: content chunks per answer"
    )
    parser.add_argument(
        "--cache", action="store_true", help="--cprofile: the cache on, every request a hit"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="--cprofile: timed runs without the profiler"
    )
    parser.add_argument(
        "--storage",
        default="memory://",
        help="the quotas' storage URI (redis://... for a running redis-server), for the live "
        "workers as for --cprofile",
    )
    args = parser.parse_args(argv)
    if args.cprofile:
        return cprofile_main(args)
    if not shutil.which(args.py_spy) and not os.access(args.py_spy, os.X_OK):
        print(
            "py-spy not found: pip install -r bench/requirements.txt (or --py-spy PATH)",
            file=sys.stderr,
        )
        return 2
    if not loadgen.wrk_path():
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    run_args = run.parse_args(["--quick", "--targets", args.target])
    children = processes.Children()
    workdir = loadgen.scratch_dir(RESULTS_DIR)
    try:
        url, master = start(run_args, children, workdir, args.target, args.storage)
        body = request_body(False)
        loadgen.run_wrk(url, body, CLIENT_TOKEN, args.concurrency, 2, workdir, children)
        raw = workdir / f"{args.target}.pyspy.txt"
        spy = subprocess.Popen(
            [
                args.py_spy,
                "record",
                "--pid",
                str(master),
                "--subprocesses",
                "--gil",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration + 1),
                "--format",
                "raw",
                "--output",
                str(raw),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            process_group=0,
        )
        children.register(spy, "py-spy")
        time.sleep(0.5)
        result = loadgen.run_wrk(
            url, body, CLIENT_TOKEN, args.concurrency, args.duration, workdir, children
        )
        _, err = spy.communicate(timeout=args.duration + 30)
        if not raw.exists():
            print(f"py-spy failed: {err.strip()}", file=sys.stderr)
            return 1
        print(
            f"{args.target}, concurrency {args.concurrency}: {result.rps:.0f} req/s, p50 "
            f"{result.p50_ms:.3f} ms under py-spy ({result.requests} requests)\n"
        )
        print(analyse(raw, args.rate, result.requests, args.top))
        print(f"\nraw samples: {raw.relative_to(ROOT)}")
    finally:
        children.stop_all()
    return 0


def start(
    run_args, children, workdir: Path, target: str, storage: str = "memory://"
) -> tuple[str, int]:
    """The fake upstream and one target, as bench/run.py starts them (the proxy's quotas in
    `storage`)."""
    up_url, _ = processes.start_upstream(
        children, workdir, "upstream", run_args.chunks, run_args.interval
    )
    env = processes.server_env(run_args.workers, run_args.log_level)
    kind = "proxy" if target == "proxy" else "bare"
    base, proc = processes.start_server(children, workdir, kind, up_url, target, env, storage)
    return base + CHAT_PATH, proc.pid


if __name__ == "__main__":
    sys.exit(main())
