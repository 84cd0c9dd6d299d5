"""Open streams and memory: many concurrent long streams held through the proxy (and the bare
forwarder), and each worker's memory at rest, while holding them and after a 100k-request soak.

    .venv/bin/python bench/streams.py [--streams 1000] [--seconds 20] [--soak-requests 100000]

bench/run.py runs both parts as part of the full benchmark; this command runs them alone and
prints the report's sections. Two arrival patterns for the streams:
  * held: the starts are spread over half a stream's length, so every stream is open at once
    for the second half (the peak is measured) and streams arrive at twice the rate that keeps
    that many open for good (Little's law: N streams of T seconds need N / T new ones a second);
  * burst: every start within one second, which on a small machine measures how fast streams
    can be set up more than how many can be held.
Time to first byte is compared with the same streams sent straight to the fake upstream.
The soak runs the proxy exactly as shipped (64 threads) and samples worker memory every 10% of it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # noqa: E402
import processes  # noqa: E402
from common import CHAT_PATH, CLIENT_TOKEN, MODEL, RESULTS_DIR, log, ms, request_body  # noqa: E402
from measurement import load_once  # noqa: E402

BURST_SPREAD_S = 1.0
# After each pattern, worker memory is watched until under this, for at most this long.
SETTLE_MB = 60.0
SETTLE_SECONDS = 60.0
SOAK_CONCURRENCY = 16
SOAK_SAMPLES = 10


rss_mb = processes.rss_mb


def worker_rss(master: int) -> list[float]:
    return [round(rss_mb(pid), 1) for pid in processes.worker_pids(master)]


class PeakRss:
    """Samples the workers' RSS twice a second in the background; keeps each one's highest."""

    def __init__(self, master: int) -> None:
        self.pids = processes.worker_pids(master)
        self.peak = {pid: 0.0 for pid in self.pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], rss_mb(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def values(self) -> list[float]:
        return [round(self.peak[pid], 1) for pid in self.pids]


def settle(master: int, limit_mb: float = SETTLE_MB, seconds: float = SETTLE_SECONDS) -> dict:
    """Each worker's RSS once all are under `limit_mb`, or after `seconds` (idle threads and
    pooled connections are let go of after a while): the values and the seconds it took."""
    started = time.monotonic()
    while True:
        rss = worker_rss(master)
        waited = time.monotonic() - started
        if max(rss) < limit_mb or waited >= seconds:
            return {"rss": rss, "seconds": round(waited, 1)}
        time.sleep(1.0)


def stream_body() -> bytes:
    return json.dumps(
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()


def open_streams(args, children, workdir: Path) -> dict:
    """N streams of T seconds (one chunk a second), held and in a burst, for direct, bare and
    the proxy, with worker memory before, at the peak and after."""
    seconds, count = args.open_seconds, args.open_streams
    threads = count // args.workers + 50
    upstream, _ = processes.start_upstream(children, workdir, "open-upstream", seconds, 1.0)
    env = processes.server_env(args.workers, args.log_level, threads)
    servers = {
        "bare": processes.start_server(children, workdir, "bare", upstream, "open-bare", env),
        "proxy": processes.start_server(children, workdir, "proxy", upstream, "open-proxy", env),
    }
    urls = {"direct": upstream + CHAT_PATH}
    urls.update({name: base + CHAT_PATH for name, (base, _) in servers.items()})
    memory = {name: {"rest": worker_rss(proc.pid)} for name, (_, proc) in servers.items()}
    patterns = {"held": seconds / 2, "burst": BURST_SPREAD_S}
    runs: dict[str, dict[str, dict]] = {}
    for pattern, spread in patterns.items():
        for target in ("direct", "bare", "proxy"):
            log(f"open streams: {count} x {seconds} s, {pattern} ({spread:g} s), {target}")
            proc = servers[target][1] if target in servers else None
            peak = PeakRss(proc.pid) if proc else None
            with peak or contextlib.nullcontext():
                result = loadgen.measure_streams(
                    urls[target],
                    stream_body(),
                    CLIENT_TOKEN,
                    count,
                    1,
                    seconds,
                    1.0,
                    timeout=seconds * 3,
                    spread=spread,
                )
            summary = result.summary()
            runs.setdefault(pattern, {})[target] = summary
            if peak:
                memory[target][f"peak_{pattern}"] = peak.values()
                memory[target][f"after_{pattern}"] = worker_rss(proc.pid)
                memory[target][f"settled_{pattern}"] = settle(proc.pid)
            log(
                f"  completed {summary['streams'] - summary['failed']}/{summary['streams']}, "
                f"peak open {summary['peak_open']}, TTFB p50 {summary['ttfb_p50_ms']:.1f} / p99 "
                f"{summary['ttfb_p99_ms']:.1f} ms, chunks {summary['chunks']}/"
                f"{summary['expected_chunks']}"
            )
            if summary["problems"]:
                log(f"  problems: {summary['problems'][:3]}")
    return {
        "streams": count,
        "seconds": seconds,
        "threads": threads,
        "workers": args.workers,
        "spreads": patterns,
        "runs": runs,
        "memory": memory,
    }


def soak(args, children, workdir: Path) -> dict:
    """The proxy as shipped (default threads), its workers' RSS at rest and every tenth of a
    soak of --soak-requests non-streamed requests."""
    upstream, _ = processes.start_upstream(children, workdir, "soak-upstream", 1, 0.0)
    env = processes.server_env(args.workers, args.log_level)
    base, proc = processes.start_server(children, workdir, "proxy", upstream, "soak-proxy", env)
    body = request_body(False)
    url = base + CHAT_PATH
    samples = [{"requests": 0, "rss": worker_rss(proc.pid)}]
    step = max(1, args.soak_requests // SOAK_SAMPLES)
    done, errors, started = 0, 0, time.monotonic()
    log(f"soak: {args.soak_requests} requests at concurrency {SOAK_CONCURRENCY}")
    while done < args.soak_requests:
        # A few seconds at a time, so memory is sampled about every tenth of the soak.
        result = load_once(url, body, SOAK_CONCURRENCY, 2, workdir, children)
        done += result.requests
        errors += result.errors + result.non_2xx
        if done >= samples[-1]["requests"] + step or done >= args.soak_requests:
            samples.append({"requests": done, "rss": worker_rss(proc.pid)})
    return {
        "requests": done,
        "errors": errors,
        "seconds": round(time.monotonic() - started, 1),
        "threads": 64,
        "samples": samples,
    }


def render(open_result: dict | None, soak_result: dict | None) -> list[str]:
    """The report's sections for both parts (Markdown lines)."""
    lines: list[str] = []
    if open_result:
        o = open_result
        lines += [
            "## Open streams",
            "",
            f"{o['streams']} streams of {o['seconds']} s (one content chunk a second) through "
            f"{o['workers']} gthread workers with THREADS={o['threads']}; the bare forwarder "
            "under the same settings. *held*: starts spread over "
            f"{o['spreads']['held']:g} s, so all are open together for the second half; "
            f"*burst*: every start within {o['spreads']['burst']:g} s. *Added TTFB* is the "
            "target's time to first byte minus that of the same streams straight to the "
            "upstream, at the same percentile.",
            "",
            "| pattern | target | completed | peak open | TTFB p50 ms | TTFB p99 ms | added TTFB "
            "p50 / p99 ms | chunk delay p50 / p99 ms | chunks |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for pattern, targets in o["runs"].items():
            direct = targets.get("direct")
            for target, s in targets.items():
                added = "–"
                if direct and target != "direct":
                    added = (
                        f"{s['ttfb_p50_ms'] - direct['ttfb_p50_ms']:.1f} / "
                        f"{s['ttfb_p99_ms'] - direct['ttfb_p99_ms']:.1f}"
                    )
                lines.append(
                    f"| {pattern} | {target} | {s['streams'] - s['failed']}/{s['streams']} | "
                    f"{s['peak_open']} | {ms(s['ttfb_p50_ms'], 1)} | "
                    f"{ms(s['ttfb_p99_ms'], 1)} | {added} | "
                    f"{ms(s['delay_p50_ms'], 1)} / {ms(s['delay_p99_ms'], 1)} | "
                    f"{s['chunks']}/{s['expected_chunks']} |"
                )
        lines += [
            "",
            f"RSS per worker (MB); *settled*: once every worker is under {SETTLE_MB:g} MB, or "
            f"after {SETTLE_SECONDS:g} s (how long it took in brackets):",
            "",
            "| target | at rest | peak, held | after held | settled after held | peak, burst | "
            "after burst | settled after burst |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for target, mem in o["memory"].items():
            cells = []
            for key in (
                "rest",
                "peak_held",
                "after_held",
                "settled_held",
                "peak_burst",
                "after_burst",
                "settled_burst",
            ):
                value = mem.get(key, [])
                if isinstance(value, dict):  # settled: the values and how long it took
                    cells.append(
                        ", ".join(f"{v:.1f}" for v in value["rss"]) + f" ({value['seconds']:g} s)"
                    )
                else:
                    cells.append(", ".join(f"{v:.1f}" for v in value))
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
        lines.append("")
    if soak_result:
        s = soak_result
        workers = range(len(s["samples"][0]["rss"]))
        lines += [
            "## Memory under a soak",
            "",
            f"The proxy as shipped (THREADS={s['threads']}), {s['requests']} non-streamed requests "
            f"at concurrency {SOAK_CONCURRENCY} in {s['seconds']:.0f} s ({s['errors']} errors); "
            "RSS of each worker (MB) as the soak went on. The rise over the first requests is "
            "the worker warming up (the metrics' label sets, pooled connections, the quota "
            "windows' counters, at most 62 a window whatever the traffic); after that it holds "
            "steady.",
            "",
            "| requests | " + " | ".join(f"worker {i + 1}" for i in workers) + " |",
            "| ---: | " + " | ".join("---:" for _ in workers) + " |",
        ]
        for sample in s["samples"]:
            lines.append(
                f"| {sample['requests']} | " + " | ".join(f"{v:.1f}" for v in sample["rss"]) + " |"
            )
        lines.append("")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", dest="open_streams", type=int, default=1000)
    parser.add_argument("--seconds", dest="open_seconds", type=int, default=20)
    parser.add_argument("--soak-requests", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes.raise_fd_limit()
    workdir = loadgen.scratch_dir(RESULTS_DIR)
    children = processes.Children()
    try:
        open_result = open_streams(args, children, workdir) if args.open_streams else None
        soak_result = soak(args, children, workdir) if args.soak_requests else None
    finally:
        children.stop_all()
    print("\n".join(render(open_result, soak_result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
