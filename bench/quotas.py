"""Added cost of quotas per request, with memory:// (in one process, and as a gunicorn server's
workers share it) and with a local redis-server.

    .venv/bin/python bench/quotas.py [--requests 5000] [--rates 10,100,1000,2000] [--seconds 3]

bench/run.py runs the first table as part of the full benchmark; this command runs both alone.

Two configurations: "typical" (requests_per_minute on the client token and on the deployment) and
"full" (request, token and budget limits on the token; request and token limits on the
deployment). "Admission" is the reservation made before the upstream call (every window, one
storage round trip); "settling" replaces it by the real usage after the answer has been sent:
with Redis it is queued, and the next admission carries it in its own round trip (so here the
admission column holds the previous request's settle too, and settling costs only the queueing).
Prints median and p99 per request.

The second table is the quota cost per request (reservation + settling, full limits) at a steady
rate from 10 to 2,000 requests per second: flat, as windows are counters whatever the traffic;
beside it one hit on limits' own memory moving window holding a minute of that traffic (one entry
per request, kept and shifted on every hit), whose cost grows with the rate.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import processes  # noqa: E402
from limits import RateLimitItemPerMinute  # noqa: E402
from limits.storage import MemoryStorage  # noqa: E402
from limits.strategies import MovingWindowRateLimiter  # noqa: E402

from app.config import load_config  # noqa: E402
from app.hooks.limits_shared import share_between_workers  # noqa: E402
from app.ratelimit import Quotas  # noqa: E402
from app.reservations import reserve  # noqa: E402

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
TYPICAL = {
    "default_model": None,
    "auth": {"tokens": [{"name": "bench", "token": "bench-token", "requests_per_minute": 10**9}]},
    "models": [{"name": "m", "provider": "echo", "requests_per_minute": 10**9}],
}
FULL = {
    "default_model": None,
    "auth": {
        "tokens": [
            {
                "name": "bench",
                "token": "bench-token",
                "requests_per_minute": 10**9,
                "requests_per_day": 10**9,
                "tokens_per_minute": 10**12,
                "budget_per_day": 10**6,
            }
        ]
    },
    "models": [
        {
            "name": "m",
            "provider": "echo",
            "requests_per_minute": 10**9,
            "tokens_per_minute": 10**12,
            "input_cost_per_mtok": 1,
            "output_cost_per_mtok": 2,
        }
    ],
}


def measure(base: dict, storage: str, strategy: str, requests: int) -> list[float]:
    """Median and p99 (ms) of admission (the reservation), then of settling."""
    quotas, token, model = _quotas(base, storage, strategy)
    admit, settle = [], []
    for _ in range(requests):
        started = time.perf_counter()
        held = reserve(quotas, token, [model], quotas.demand(20, 200))
        admitted = time.perf_counter()
        held.settle(20, 100, model)
        settle.append(time.perf_counter() - admitted)
        admit.append(admitted - started)
    figures = []
    for timings in (admit, settle):
        timings.sort()
        figures += [statistics.median(timings) * 1000, timings[int(len(timings) * 0.99)] * 1000]
    return figures


def _quotas(base: dict, storage: str, strategy: str):
    """Quotas over `storage`; "workers://<file>" is memory:// as the proxy's gunicorn workers
    count it (every worker of the server in that file)."""
    shared = storage.removeprefix(WORKERS) if storage.startswith(WORKERS) else None
    uri = "memory://" if shared else storage
    config = load_config(
        env={}, overrides={**base, "rate_limits": {"storage": uri, "strategy": strategy}}
    )
    share_between_workers(shared)
    try:
        return Quotas(config), config.tokens[0], config.models[0]
    finally:
        share_between_workers(None)


WORKERS = "workers://"


def _storages(children: processes.Children, workdir: Path) -> list[tuple[str, str]]:
    """(label, storage) for memory:// (one process; a server's workers) and, if installed, a
    local redis-server."""
    storages = [
        ("memory", "memory://"),
        ("memory, workers of a server", f"{WORKERS}{workdir / 'quotas.bin'}"),
    ]
    redis_url = processes.start_redis(children, workdir)
    if redis_url:
        storages.append(("redis (loopback)", redis_url))
    return storages


def measure_rate(storage: str, rate: float, seconds: float) -> dict:
    """The quota cost per request (reservation + settling) at a steady `rate` of requests per
    second, with the full set of limits; and, for comparison, limits' own moving-window hit
    on one memory window (one entry kept and scanned per request) at the same rate."""
    quotas, token, model = _quotas(FULL, storage, "moving-window")
    moving = MovingWindowRateLimiter(MemoryStorage())
    item = RateLimitItemPerMinute(10**9)
    # A minute of traffic at this rate already in the moving window, as in steady state.
    moving.hit(item, "bench", cost=int(rate * 60))
    count = max(50, int(rate * seconds))
    costs, moving_costs = [], []
    start = time.perf_counter()
    for i in range(count):
        # Paced: request i starts at start + i / rate (at once when behind). At slow rates
        # the CPU and its caches cool down between requests, which shows as a higher cost.
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        began = time.perf_counter()
        held = reserve(quotas, token, [model], quotas.demand(20, 200))
        held.settle(20, 100, model)
        middle = time.perf_counter()
        moving.hit(item, "bench")
        moving_costs.append(time.perf_counter() - middle)
        costs.append(middle - began)
    achieved = count / (time.perf_counter() - start)
    # The last half (the first requests warm the caches up).
    tail, moving_tail = sorted(costs[count // 2 :]), sorted(moving_costs[count // 2 :])
    return {
        "rate": rate,
        "achieved": achieved,
        "p50_ms": statistics.median(tail) * 1000,
        "p99_ms": tail[int(len(tail) * 0.99)] * 1000,
        "moving_p50_ms": statistics.median(moving_tail) * 1000,
    }


def measure_rates(rates: list[float], seconds: float) -> list[dict]:
    """measure_rate for memory:// and a local redis-server (if installed) at each rate."""
    children = processes.Children()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quota-rates-") as workdir:
        try:
            storages = _storages(children, Path(workdir))
            for (label, uri), rate in itertools.product(storages, rates):
                rows.append({"storage": label, **measure_rate(uri, rate, seconds)})
        finally:
            children.stop_all()
    return rows


def render_rates(rows: list[dict]) -> list[str]:
    lines = [
        "| storage | req/s asked | req/s run | quota cost median ms | p99 | "
        "limits' memory moving window hit, median ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['storage']} | {row['rate']:g} | {row['achieved']:.0f} | "
            f"{row['p50_ms']:.3f} | {row['p99_ms']:.3f} | {row['moving_p50_ms']:.4f} |"
        )
    return lines


def measure_all(requests: int) -> list[dict]:
    """Every storage (memory, and a local redis-server if installed) x configuration x strategy."""
    children = processes.Children()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quotas-") as workdir:
        try:
            storages = _storages(children, Path(workdir))
            for (label, uri), (limits, base), strategy in itertools.product(
                storages, (("typical", TYPICAL), ("full", FULL)), STRATEGIES
            ):
                admit_p50, admit_p99, charge_p50, charge_p99 = measure(
                    base, uri, strategy, requests
                )
                rows.append(
                    {
                        "storage": label,
                        "limits": limits,
                        "strategy": strategy,
                        "admit_p50_ms": admit_p50,
                        "admit_p99_ms": admit_p99,
                        "charge_p50_ms": charge_p50,
                        "charge_p99_ms": charge_p99,
                    }
                )
        finally:
            children.stop_all()
    return rows


def render(rows: list[dict]) -> list[str]:
    lines = [
        "| storage | limits | strategy | admission median ms | p99 | settling median ms | p99 |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        keys = ("admit_p50_ms", "admit_p99_ms", "charge_p50_ms", "charge_p99_ms")
        figures = (row[key] for key in keys)
        lines.append(
            f"| {row['storage']} | {row['limits']} | {row['strategy']} | "
            + " | ".join(f"{f:.3f}" for f in figures)
            + " |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument(
        "--rates", default="10,100,1000,2000", help="comma-separated requests per second"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per rate")
    args = parser.parse_args()
    print("\n".join(render(measure_all(args.requests))))
    print()
    rates = [float(rate) for rate in args.rates.split(",") if rate]
    print("\n".join(render_rates(measure_rates(rates, args.seconds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
