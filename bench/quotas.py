"""Added cost of quota checks per request, with memory:// and with a local redis-server.

    .venv/bin/python bench/quotas.py [--requests 5000]

bench/run.py runs it as part of the full benchmark; this command runs it alone.

Two configurations: "typical" (requests_per_minute on the client token and on the deployment) and
"full" (request, token and budget limits on the token; request and token limits on the
deployment). "Admission" is what runs before the upstream call (client and deployment checks plus
the x-ratelimit-* window); "charge" runs after the answer has been sent (tokens and cost), so it
adds nothing to the client's latency. Prints median and p99 per request.
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

from app.config import load_config  # noqa: E402
from app.ratelimit import Quotas  # noqa: E402

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
    """Median and p99 (ms) of admission, then of charging."""
    config = load_config(
        env={}, overrides={**base, "rate_limits": {"storage": storage, "strategy": strategy}}
    )
    quotas = Quotas(config)
    token, model = config.tokens[0], config.models[0]
    admit, charge = [], []
    for _ in range(requests):
        started = time.perf_counter()
        quotas.admit_client(token)
        quotas.admit_deployment(model.key)
        admitted = time.perf_counter()
        quotas.charge(token, model.key, 120, 0.0002)
        charge.append(time.perf_counter() - admitted)
        admit.append(admitted - started)
    figures = []
    for timings in (admit, charge):
        timings.sort()
        figures += [statistics.median(timings) * 1000, timings[int(len(timings) * 0.99)] * 1000]
    return figures


def measure_all(requests: int) -> list[dict]:
    """Every storage (memory, and a local redis-server if installed) x configuration x strategy."""
    children = processes.Children()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-quotas-") as workdir:
        try:
            storages = [("memory", "memory://")]
            redis_url = processes.start_redis(children, Path(workdir))
            if redis_url:
                storages.append(("redis (loopback)", redis_url))
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
        "| storage | limits | strategy | admission median ms | p99 | charge median ms | p99 |",
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
    args = parser.parse_args()
    print("\n".join(render(measure_all(args.requests))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
