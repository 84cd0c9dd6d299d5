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

This file is the command and the order of the parts; the work is in processes.py (starting,
watching and stopping every process), measurement.py (load and chunk measurements, retried on a
busy machine), streams.py and quotas.py (the other parts), goals.py and report.py (results.md and
the plot), common.py (what they all share).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import goals  # noqa: E402
import loadgen  # noqa: E402
import measurement  # noqa: E402
import peers  # noqa: E402
import processes  # noqa: E402
import quotas  # noqa: E402
import report  # noqa: E402
import streams as open_streams  # noqa: E402
from common import (  # noqa: E402
    DEFAULT_OUTPUT,
    DEFAULT_TARGETS,
    PARTS,
    PEER_TARGETS,
    RESULTS_DIR,
    ROOT,
    TARGETS,
    log,
)

# Defaults that depend on --quick: (full run, --quick).
SCALED_DEFAULTS = {
    "duration": (5.0, 3.0),
    "rounds": (3, 1),
    "quiet_wait": (30.0, 2.0),
    "retries": (2, 0),
    "quiet_budget": (240.0, 5.0),
    "stream_rounds": (3, 1),
    "open_streams": (1000, 100),
    "open_seconds": (20, 6),
    "soak_requests": (100_000, 5000),
    "quota_requests": (5000, 500),
}
ZERO_ALLOWED = {"quiet_wait", "retries", "quiet_budget"}


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
        default=",".join(DEFAULT_TARGETS),
        help="of direct,bare,proxy,proxy-redis,portkey,litellm (proxy-redis: quotas in a local "
        "redis-server; portkey, litellm: the peers, see --peers)",
    )
    parser.add_argument(
        "--quota-strategy",
        choices=("fixed-window", "moving-window", "sliding-window-counter"),
        help="rate_limits.strategy of the proxy's config (default: the proxy's default)",
    )
    parser.add_argument(
        "--proxy-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the proxy's processes alone (repeatable), e.g. "
        "PYTHONMALLOC=malloc",
    )
    parser.add_argument(
        "--peers",
        action="store_true",
        help=f"also run the peers (LiteLLM {peers.LITELLM_VERSION}, Portkey gateway "
        f"{peers.PORTKEY_VERSION}), installed on first use into the git-ignored .peers/",
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
    for name, (full, quick) in SCALED_DEFAULTS.items():
        given = getattr(args, name)
        # A 0 wait, retry count or budget is kept; a 0 length or count means the default.
        keep = given is not None if name in ZERO_ALLOWED else bool(given)
        setattr(args, name, given if keep else quick if args.quick else full)
    args.rounds = max(1, args.rounds)
    args.quiet_spent = 0.0
    args.parts = _names(parser, "parts", args.parts, PARTS)
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.targets = _names(parser, "targets", args.targets, TARGETS)
    if args.peers:
        args.targets += [peer for peer in PEER_TARGETS if peer not in args.targets]
    args.proxy_env = _environment(parser, args.proxy_env)
    if args.output is None:
        args.output = RESULTS_DIR / "quick.md" if args.quick else DEFAULT_OUTPUT
    return args


def _names(parser: argparse.ArgumentParser, what: str, text: str, known: tuple) -> list[str]:
    """A comma-separated list of names, each one of `known` (else a usage error)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = set(names) - set(known)
    if unknown:
        parser.error(f"unknown {what}: {', '.join(sorted(unknown))}")
    return names


def _environment(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, str]:
    """NAME=VALUE pairs as a dict (else a usage error)."""
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            parser.error(f"--proxy-env takes NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def settings(args: argparse.Namespace, quiet_spent: float) -> dict:
    """The run's settings, as the report states them."""
    return {
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
        "quiet_spent_s": round(quiet_spent, 1),
        "proxy_env": args.proxy_env,
    }


def run(args: argparse.Namespace, children: processes.Children) -> dict:
    """Every part asked for, in order: load and chunks against one set of targets, then open,
    soak and quotas, each with processes of its own."""
    workdir = loadgen.scratch_dir(RESULTS_DIR)
    log(f"logs and generated files in {workdir.relative_to(ROOT)}")
    use_wrk, loadgen_name = measurement.choose_loadgen(args.loadgen)
    info = measurement.machine_info(loadgen_name)
    log(f"load generator: {loadgen_name}")

    targets = processes.start_targets(args, children, workdir)
    args.targets = [t for t in args.targets if t in targets.urls]
    load = []
    if "load" in args.parts:
        load = measurement.measure_load(
            args, targets.urls, targets.groups, use_wrk, workdir, children, targets.headers
        )
    # The streams get a quiet budget of their own: they are short and the most easily disturbed.
    load_quiet_spent, args.quiet_spent = args.quiet_spent, 0.0
    streams = {}
    if "chunks" in args.parts:
        streams = measurement.measure_chunks(args, targets.urls, targets.groups, targets.headers)
    # Each server's memory (all its processes) after the load it has served.
    rss = {
        name: processes.group_rss(pgid) for name, pgid in targets.groups.items() if name != "direct"
    }
    pss = {
        name: processes.group_pss(pgid) for name, pgid in targets.groups.items() if name != "direct"
    }

    # The proxy's log, to show what it wrote per request (its access line is an INFO record).
    proxy_requests = sum(r["requests"] for r in load if r["target"] == "proxy")
    proxy_log_note = (
        f"proxy log: {processes.count_lines(targets.proxy_log)} lines for about "
        f"{proxy_requests} measured requests plus warm-ups and streams"
    )
    log(proxy_log_note)
    # The other parts start servers of their own; these would only take memory and CPU.
    children.stop_all()
    results = {
        "info": info,
        "workdir": str(workdir),
        "proxy_log": proxy_log_note,
        "settings": settings(args, load_quiet_spent + args.quiet_spent),
        "load": load,
        "streams": streams,
        "rss_mb": rss,
        "pss_mb": {name: value for name, value in pss.items() if value is not None},
        "peers": {
            "versions": peers.versions(),
            "ran": [t for t in PEER_TARGETS if t in targets.urls],
            "skipped": targets.skipped,
        },
    }
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


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes.QUOTA_STRATEGY = args.quota_strategy
    processes.PROXY_ENV = args.proxy_env
    processes.raise_fd_limit()
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python bench/run.py", *([shlex.join(given)] if given else [])])
    # SIGINT too: a shell starts background jobs with it ignored, and Ctrl-C must still work.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    # The session's autogroup outlives this run: its niceness is put back at the end.
    autogroup_before = processes.autogroup_niceness()
    args.nice_applied = processes.set_niceness(args.nice)
    children = processes.Children()
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
            processes.set_autogroup_niceness(autogroup_before)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    results["date"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["goals"] = goals.evaluate(results)
    # Every sample, kept before anything below can fail.
    Path(results["workdir"], "results.json").write_text(json.dumps(results, indent=2))
    output: Path = args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    png = output.with_suffix(".png")
    if not args.no_plot and report.plot(results, png):
        results["plot"] = png.name
    markdown = report.render(results, results["goals"], command)
    output.write_text(markdown)
    print(markdown)
    where = output.relative_to(ROOT) if output.is_relative_to(ROOT) else output
    log(f"done in {results['elapsed_s']:.0f} s; report written to {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
