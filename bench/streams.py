"""Many open streams and memory per worker: the proxy holding N concurrent long streams, and its
workers' memory at rest, after the streams and after a soak of many requests.

    .venv/bin/python bench/streams.py [--streams 1000] [--seconds 20] [--soak-requests 100000]

Starts the fake upstream (one chunk a second per stream) and the proxy as shipped (2 workers,
threads enough for the streams), opens every stream at once (spread over one second), and
reports completed streams, time to first byte against the upstream alone, and each worker's RSS.
The soak drives non-streamed requests with wrk until the count is reached. Writes a Markdown
table to docs/benchmarks/streams.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadgen import measure_streams, run_wrk, scratch_dir, wrk_path  # noqa: E402
from run import ROOT, Children, free_port, wait_healthy  # noqa: E402

TOKEN = "bench-stream-token"
OUT = ROOT / "docs/benchmarks/streams.md"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(pid) for pid in children.read_text().split()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20, help="length of each stream")
    parser.add_argument("--soak-requests", type=int, default=100_000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children inherit it

    workdir = scratch_dir(ROOT / "bench/results")
    children = Children()
    rows: list[tuple[str, str]] = []
    try:
        up_port, proxy_port = free_port(), free_port()
        env = {**os.environ}
        upstream = children.start(
            "upstream",
            [
                sys.executable,
                "bench/upstream.py",
                "--port",
                str(up_port),
                "--chunks",
                str(args.seconds),
                "--interval",
                "1.0",
                "--procs",
                "1",
            ],
            env,
            workdir / "upstream.log",
        )
        time.sleep(0.5)
        config = workdir / "config.yaml"
        config.write_text(
            json.dumps(
                {
                    "default_model": None,
                    "models": [
                        {
                            "name": "bench",
                            "provider": "openai",
                            "base_url": f"http://127.0.0.1:{up_port}/v1",
                            "token": "up-key",
                        }
                    ],
                    "routing": {"stream_timeout_seconds": args.seconds * 4},
                }
            )
        )
        proxy_env = {
            **env,
            "AI_PROXY_CONFIG": str(config),
            "AUTH_TOKEN": TOKEN,
            "HOST": "127.0.0.1",
            "PORT": str(proxy_port),
            "WEB_CONCURRENCY": "2",
            "THREADS": str(args.streams // 2 + 50),
            "LOG_LEVEL": "WARNING",
        }
        proxy = children.start(
            "proxy",
            [sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py", "wsgi:app"],
            proxy_env,
            workdir / "proxy.log",
        )
        base = f"http://127.0.0.1:{proxy_port}"
        wait_healthy("proxy", base + "/healthz", proxy, workdir / "proxy.log")
        workers = worker_pids(proxy.pid)
        rows.append(("RSS per worker at rest (MB)", ", ".join(f"{rss_mb(p):.1f}" for p in workers)))

        body = json.dumps(
            {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        ).encode()
        direct = measure_streams(
            f"http://127.0.0.1:{up_port}/v1/chat/completions",
            body,
            None,
            args.streams,
            1,
            args.seconds,
            1.0,
            timeout=args.seconds * 3,
        )
        proxied = measure_streams(
            base + "/v1/chat/completions",
            body,
            TOKEN,
            args.streams,
            1,
            args.seconds,
            1.0,
            timeout=args.seconds * 3,
        )
        d, p = direct.summary(), proxied.summary()
        rows += [
            (
                f"{args.streams} streams of {args.seconds} s: completed / failed",
                f"direct {d['streams'] - d['failed']} / {d['failed']}; "
                f"proxy {p['streams'] - p['failed']} / {p['failed']}",
            ),
            ("chunks delivered", f"proxy {p['chunks']} of {p['expected_chunks']}"),
            (
                "time to first byte p50 / p99 (ms)",
                f"direct {d['ttfb_p50_ms']:.1f} / {d['ttfb_p99_ms']:.1f}; "
                f"proxy {p['ttfb_p50_ms']:.1f} / {p['ttfb_p99_ms']:.1f}",
            ),
            ("added time to first byte p99 (ms)", f"{p['ttfb_p99_ms'] - d['ttfb_p99_ms']:.1f}"),
            (
                "chunk delay p50 / p99 (ms)",
                f"proxy {p['delay_p50_ms']:.1f} / {p['delay_p99_ms']:.1f}",
            ),
            (
                "RSS per worker after the streams (MB)",
                ", ".join(f"{rss_mb(pid):.1f}" for pid in workers),
            ),
        ]
        if p["problems"]:
            rows.append(("stream problems (first few)", "; ".join(p["problems"])))

        if args.soak_requests and wrk_path():
            whole = json.dumps(
                {"model": "bench", "messages": [{"role": "user", "content": "hi"}]}
            ).encode()
            done, started = 0, time.monotonic()
            while done < args.soak_requests:
                result = run_wrk(
                    base + "/v1/chat/completions", whole, TOKEN, 16, 10, workdir, children
                )
                done += result.requests
            rows += [
                (f"soak: {done} requests in {time.monotonic() - started:.0f} s", "completed"),
                (
                    "RSS per worker after the soak (MB)",
                    ", ".join(f"{rss_mb(pid):.1f}" for pid in workers),
                ),
            ]
        del upstream
    finally:
        children.stop_all()

    table = ["| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    text = (
        "# Open streams and memory\n\n"
        f"- **Command:** `.venv/bin/python bench/streams.py --streams {args.streams} "
        f"--seconds {args.seconds} --soak-requests {args.soak_requests}`\n"
        f"- **Date:** {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; 2 cores; proxy as "
        "shipped (gthread, 2 workers), everything on the same machine.\n\n"
        + "\n".join(table)
        + "\n"
    )
    OUT.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
