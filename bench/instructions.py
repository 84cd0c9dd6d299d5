"""Instructions per request, counted exactly: the in-process app under valgrind's callgrind.

    apt-get install -y valgrind
    .venv/bin/python bench/instructions.py [--targets proxy,bare] [--requests 200] [--cache-sim]

On a shared machine, timings move between runs of the same code by more than most changes save.
Instruction counts do not. Each target (the proxy's WSGI app, or the bare forwarder's, set up as
bench/profile.py --cprofile sets it: every feature on, the fake upstream outside valgrind) runs
twice in a child process under callgrind: N and 2N requests after the same warm-up. The
difference divided by N is one request's count; start-up, imports and warm-up cancel out.

`--cache-sim` adds valgrind's cache and branch simulation: L1 instruction and data misses and
mispredicted branches per request. Code that runs fewer instructions can still take longer when
it touches more memory, which is where the proxy stood against the forwarder when this was
written (3.3 M against 3.8 M instructions a request, about 10% more CPU time). gunicorn's part
is not in it; neither is the kernel's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# What each callgrind event is, in the table (events not listed are shown by their own name).
EVENTS = {
    "Ir": "instructions",
    "Dr": "memory reads",
    "Dw": "memory writes",
    "I1mr": "L1 instruction misses",
    "D1mr": "L1 data read misses",
    "D1mw": "L1 data write misses",
    "ILmr": "last-level instruction misses",
    "DLmr": "last-level data read misses",
    "DLmw": "last-level data write misses",
    "Bc": "conditional branches",
    "Bcm": "mispredicted conditional branches",
    "Bi": "indirect branches",
    "Bim": "mispredicted indirect branches",
}
WARM_UP = 100


def parse_totals(text: str) -> dict[str, int]:
    """The event totals of a callgrind output file (its `events:` and `totals:` lines; an
    older `summary:` line when there is no `totals:`)."""
    names: list[str] = []
    values: list[int] | None = None
    summary: list[int] | None = None
    for line in text.splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("totals:"):
            values = [int(v) for v in line.split()[1:]]
        elif line.startswith("summary:"):
            summary = [int(v) for v in line.split()[1:]]
    counts = values if values is not None else summary
    if not names or counts is None:
        raise ValueError("not a callgrind output file: no events and totals")
    return dict(zip(names, counts, strict=False))


def per_request(fewer: dict[str, int], more: dict[str, int], requests: int) -> dict[str, float]:
    """Each event's count for one request: the difference between a run of `requests` more
    requests and the same run without them."""
    return {name: (more[name] - fewer[name]) / requests for name in more if name in fewer}


def table(results: dict[str, dict[str, float]]) -> str:
    """A Markdown table: one row per event, one column per target, and proxy/bare when both."""
    targets = list(results)
    ratio = "proxy" in results and "bare" in results
    head = ["event per request", *targets, *(["proxy / bare"] if ratio else [])]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    first = results[targets[0]]
    for name in first:
        cells = [f"{EVENTS.get(name, name)} ({name})"]
        cells += [f"{results[t].get(name, 0.0):,.0f}" for t in targets]
        if ratio:
            bare = results["bare"].get(name, 0.0)
            cells.append(f"{results['proxy'].get(name, 0.0) / bare:.2f}x" if bare else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def count(target: str, requests: int, args) -> dict[str, int]:
    """Event totals of a child process running `requests` requests under callgrind."""
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        out = Path(tmp) / "callgrind.out"
        command = [
            args.valgrind,
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            *(["--cache-sim=yes", "--branch-sim=yes"] if args.cache_sim else []),
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            target,
            "--requests",
            str(requests),
            "--storage",
            args.storage,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{target} under callgrind failed:\n{done.stderr[-3000:]}")
        return parse_totals(out.read_text())


def child(target: str, requests: int, storage: str) -> int:
    """WARM_UP requests, then `requests` more: what the parent counts."""
    import inprocess
    import loadgen
    import processes
    from common import RESULTS_DIR

    children = processes.Children()
    workdir = loadgen.scratch_dir(RESULTS_DIR)
    try:
        app, environ, body = inprocess.load_app(target, children, workdir, storage)
        for _ in range(WARM_UP + requests):
            status = inprocess.wsgi_request(app, environ, body)
            if status != 200:
                print(f"{target}: status {status}", file=sys.stderr)
                return 1
    finally:
        children.stop_all()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="proxy,bare", help="proxy, bare or both")
    parser.add_argument("--requests", type=int, default=200, help="N (the runs do N and 2N)")
    parser.add_argument("--cache-sim", action="store_true", help="cache and branch simulation")
    parser.add_argument("--storage", default="memory://", help="the quotas' storage URI")
    parser.add_argument("--valgrind", default=shutil.which("valgrind") or "valgrind")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.requests, args.storage)
    if not os.access(args.valgrind, os.X_OK):
        message = "valgrind not found: apt-get install -y valgrind (or --valgrind PATH)"
        print(message, file=sys.stderr)
        return 2
    results = {}
    for target in args.targets.split(","):
        fewer = count(target, args.requests, args)
        more = count(target, 2 * args.requests, args)
        results[target] = per_request(fewer, more, args.requests)
        print(f"{target}: {results[target]['Ir'] / 1e6:.2f} M instructions a request", flush=True)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
