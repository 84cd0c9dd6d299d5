"""The response cache's benchmark: what a hit costs against the bare forwarder's forwarded
request, hit throughput at concurrency 16, and worker memory while many distinct answers pass.

    .venv/bin/python bench/cache.py                 # ~3 min: 100,000 distinct answers
    .venv/bin/python bench/cache.py --fill 20000    # shorter

It starts bench/upstream.py, the bare forwarder (bench/bare.py) and the proxy with `cache:` on,
--workers gunicorn workers each (2, as bench/run.py runs both servers), and measures:
  * CPU per request (the server's user + system time, every process of it, over a load run,
    divided by the requests answered): the proxy answering every request from its cache, the
    bare forwarder forwarding every one upstream;
  * requests per second at --concurrency (16) for both;
  * a second proxy with one worker and `max_memory_bytes` of --max-memory-bytes (and no
    quotas, whose moving windows would hold a minute of requests): its worker's RSS at rest
    (after a warm-up), then while --fill distinct requests (each a miss, stored) pass through;
    the goal is growth within max_memory_bytes plus 10%.
Every child process is stopped at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import processes  # noqa: E402
from common import CHAT_PATH, CLIENT_TOKEN, RESULTS_DIR, log, request_body  # noqa: E402
from loadgen import scratch_dir  # noqa: E402
from measurement import load_once  # noqa: E402
from streams import rss_mb  # noqa: E402

MIB = 1024 * 1024


def cached_config(upstream: str, max_memory_bytes: int, quotas: bool = True) -> str:
    """The benchmark's proxy config with the cache on; without `quotas`, no limits: a
    moving-window limit holds an entry per request for a minute, which is not the cache's."""
    config = json.loads(processes.proxy_config(upstream))
    if not quotas:
        for owner in (*config["auth"]["tokens"], *config["models"]):
            for limit in ("requests_per_minute", "tokens_per_minute"):
                owner.pop(limit, None)
    config["cache"] = {"enabled": True, "max_memory_bytes": max_memory_bytes, "ttl_seconds": 3600}
    return json.dumps(config, indent=2)


def start_proxy(
    children, workdir: Path, upstream: str, name: str, max_memory_bytes: int, env, quotas=True
):
    """The proxy under gunicorn with the cache on: its base URL and master process."""
    port = processes.free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(cached_config(upstream, max_memory_bytes, quotas))
    cmd = [sys.executable, "-m", "gunicorn", "-c", "conf/gunicorn.conf.py", "wsgi:app"]
    extra = {"HOST": "127.0.0.1", "PORT": str(port), "AI_PROXY_CONFIG": str(config), **env}
    log_path = workdir / f"{name}.log"
    proc = children.start(name, cmd, processes.child_env(**extra), log_path)
    base = f"http://127.0.0.1:{port}"
    processes.wait_healthy(name, base + "/healthz", proc, log_path)
    workers = int(env.get("WEB_CONCURRENCY", "1"))
    deadline = time.monotonic() + 30
    while len(processes.worker_pids(proc.pid)) < workers and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    return base, proc


def cpu_seconds(master) -> float:
    return sum(processes.process_cpu(master.pid).values())


def measure(url: str, master, args, workdir: Path, children) -> dict:
    """A load run at --concurrency: requests per second and server CPU per request."""
    body = request_body(False)
    load_once(url, body, args.concurrency, 1, workdir, children)  # warm-up (and the first miss)
    before = cpu_seconds(master)
    result = load_once(url, body, args.concurrency, args.duration, workdir, children)
    cpu = cpu_seconds(master) - before
    return {
        "requests": result.requests,
        "errors": result.errors + result.non_2xx,
        "rps": round(result.rps, 1),
        "p50_ms": round(result.p50_ms, 2),
        "cpu_us_per_request": round(cpu / max(1, result.requests) * 1e6, 1),
    }


def median_round(rounds: list[dict]) -> dict:
    """Each figure's median over the rounds (requests and errors summed)."""
    merged = {}
    for name in rounds[0]:
        values = sorted(r[name] for r in rounds)
        summed = name in ("requests", "errors")
        merged[name] = sum(values) if summed else values[len(values) // 2]
    return merged


def fill(base: str, start: int, count: int, threads: int) -> tuple[int, int]:
    """`count` distinct chat requests (numbered from `start`: each one a new answer to store),
    on keep-alive connections from `threads` threads: (answered, failed)."""
    parts = urlsplit(base)
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    template = json.loads(request_body(False))
    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}", "Content-Type": "application/json"}

    def worker(offset: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        ok = failed = 0
        for index in range(start + offset, start + count, threads):
            template["messages"][1]["content"] = f"Distinct question number {index}."
            try:
                conn.request("POST", CHAT_PATH, json.dumps(template), headers)
                answer = conn.getresponse()
                answer.read()
                ok += answer.status == 200
                failed += answer.status != 200
            except (OSError, http.client.HTTPException):
                failed += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.close()
        with lock:
            counts["ok"] += ok
            counts["failed"] += failed

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return counts["ok"], counts["failed"]


def scrape(base: str) -> dict[str, float]:
    """The proxy's cache metrics now (one worker: no labels to add up)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = http_get(base + "/metrics")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("ai_proxy_cache_")
    }


def http_get(url: str) -> str:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def memory(args, children, workdir: Path, upstream: str, env: dict) -> dict:
    """Worker RSS at rest and after each tenth of --fill distinct answers."""
    bound = args.max_memory_bytes
    base, master = start_proxy(children, workdir, upstream, "cache-fill", bound, env, quotas=False)
    (worker,) = processes.worker_pids(master.pid)
    warm = 2000
    fill(base, 0, warm, 4)  # warm-up: imports, pools, allocator arenas
    rest = rss_mb(worker)
    samples, step = [], max(1, args.fill // 10)
    done, failed, started = 0, 0, time.monotonic()
    log(f"memory: {args.fill} distinct answers, max_memory_bytes {args.max_memory_bytes}")
    while done < args.fill:
        batch = min(step, args.fill - done)
        ok, bad = fill(base, warm + done, batch, 8)
        done, failed = done + batch, failed + bad
        samples.append({"requests": done, "rss_mb": round(rss_mb(worker), 1)})
        log(f"  {done} answers: RSS {samples[-1]['rss_mb']} MB")
    peak = max(s["rss_mb"] for s in samples)
    held = scrape(base)
    allowed = args.max_memory_bytes * 1.1 / MIB
    return {
        "answers": done,
        "failed": failed,
        "seconds": round(time.monotonic() - started, 1),
        "rest_mb": round(rest, 1),
        "peak_mb": peak,
        "growth_mb": round(peak - rest, 1),
        "allowed_growth_mb": round(allowed, 1),
        "within": peak - rest <= allowed,
        "cache_bytes": held.get("ai_proxy_cache_memory_bytes"),
        "evictions": held.get("ai_proxy_cache_evictions_total"),
        "samples": samples,
    }


def run(args, children) -> dict:
    workdir = scratch_dir(RESULTS_DIR)
    env = processes.server_env(args.workers, "INFO", args.threads)
    upstream, _ = processes.start_upstream(children, workdir, "cache-upstream", 1, 0.0)
    bare, bare_proc = processes.start_server(children, workdir, "bare", upstream, "bare", env)
    proxy, proxy_proc = start_proxy(children, workdir, upstream, "cache-proxy", 64 * MIB, env)
    log(f"hits vs forwarded: {args.rounds} interleaved rounds of {args.duration:.0f} s")
    rounds: dict[str, list[dict]] = {"hits": [], "bare": []}
    for _ in range(args.rounds):
        # Interleaved, so that other work on a shared machine disturbs both alike.
        rounds["hits"].append(measure(proxy + CHAT_PATH, proxy_proc, args, workdir, children))
        rounds["bare"].append(measure(bare + CHAT_PATH, bare_proc, args, workdir, children))
    hits, forwarded = median_round(rounds["hits"]), median_round(rounds["bare"])
    children.stop_all()
    upstream, _ = processes.start_upstream(children, workdir, "fill-upstream", 1, 0.0)
    results = {"hits": hits, "bare": forwarded}
    results["workers"] = args.workers
    if args.fill:
        # One worker: its RSS is what one process's cache holds.
        one = processes.server_env(1, "INFO", args.threads)
        results["memory"] = memory(args, children, workdir, upstream, one)
    results["goals"] = {
        "hit CPU below the bare forwarder's": hits["cpu_us_per_request"]
        < forwarded["cpu_us_per_request"],
        "hit throughput at least 2x the bare forwarder's": hits["rps"] >= 2 * forwarded["rps"],
    }
    if "memory" in results:
        results["goals"]["RSS growth within max_memory_bytes + 10%"] = results["memory"]["within"]
    (workdir / "cache.json").write_text(json.dumps(results, indent=2))
    return results


def render(results: dict) -> str:
    hits, bare = results["hits"], results["bare"]
    lines = [
        f"{results['workers']} gunicorn worker(s) per server.",
        "",
        "| server (medians of the rounds) | requests | rps | p50 ms | server CPU µs/request |",
        "| --- | --- | --- | --- | --- |",
        f"| proxy, cache hits | {hits['requests']} | {hits['rps']} | {hits['p50_ms']} | "
        f"{hits['cpu_us_per_request']} |",
        f"| bare forwarder | {bare['requests']} | {bare['rps']} | {bare['p50_ms']} | "
        f"{bare['cpu_us_per_request']} |",
    ]
    memory = results.get("memory")
    if memory:
        lines.append("")
        lines.append(
            f"Memory: {memory['answers']} distinct answers ({memory['failed']} failed) in "
            f"{memory['seconds']} s; worker RSS {memory['rest_mb']} MB at rest, peak "
            f"{memory['peak_mb']} MB: growth {memory['growth_mb']} MB against "
            f"{memory['allowed_growth_mb']} MB allowed (max_memory_bytes + 10%); the cache "
            f"held {(memory['cache_bytes'] or 0) / MIB:.1f} MiB by its count after "
            f"{memory['evictions']:.0f} evictions."
        )
    lines.append("")
    lines += [f"- {'met' if ok else 'MISSED'}: {goal}" for goal, ok in results["goals"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the response cache.")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--concurrency", type=int, default=16, help="connections")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds, medians kept")
    parser.add_argument("--threads", type=int, default=None, help="THREADS for both servers")
    parser.add_argument(
        "--workers", type=int, default=2, help="WEB_CONCURRENCY for both servers (as bench/run.py)"
    )
    parser.add_argument("--fill", type=int, default=100_000, help="distinct answers (0: skip)")
    parser.add_argument(
        "--max-memory-bytes", type=int, default=32 * MIB, help="the filled proxy's cache bound"
    )
    return parser.parse_args(argv)


def _terminate(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    processes.raise_fd_limit()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _terminate)
    children = processes.Children()
    try:
        results = run(args, children)
    except KeyboardInterrupt:
        log("interrupted: stopping every process this run started")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        children.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
