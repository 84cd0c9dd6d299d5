"""What /admin/status adds so that every worker shows the same numbers (the status page's data).

Added to the report, never changing its existing fields' meaning: each deployment's `activity`
(requests in flight, latency, requests and errors per minute, summed over every worker), and a
top-level `activity` (last errors, today's cost per token and model, cache hit rate). Where a
worker keeps cooldowns or quotas in its own memory (cooldowns with any storage but Redis; quotas
with `memory://` outside the proxy's gunicorn workers, which count them together), the
deployment states and quota use shown are every live worker's put together, so no answer
depends on which worker gave it.
"""

from __future__ import annotations

import glob
import os

from ..activity import MINUTES, RECENT_MINUTES, Merged, deployment_activity
from ..ratelimit import Owner

CACHE_METRIC = "ai_proxy_cache_requests"


def live_numbers(state) -> dict:
    """What a worker publishes besides its counts: in flight, and its own cooldowns and quotas
    when it keeps them in its memory (shared ones every worker reads already)."""
    router = state.router
    live: dict = {"in_flight": router.in_flight()}
    keys = [p.model.key for p in router.providers]
    if not router.cooldowns.shared:
        live["breakers"] = {
            key: [breaker.open_until, breaker.failures]
            for key, breaker in zip(keys, router.cooldowns.states(keys), strict=True)
        }
    if state.quotas.shared:
        return live
    owners = [Owner.DEPLOYMENT.key(k) for k in keys]
    owners += [Owner.TOKEN.key(t.name) for t in state.config.tokens]
    used: dict[str, dict[str, float]] = {}
    for owner in owners:
        for name, window in state.quotas.report(owner).items():
            if window.get("remaining") is not None:
                used.setdefault(owner, {})[name] = window["limit"] - window["remaining"]
    live["quota_used"] = used
    return live


def add_shared(report: dict, state) -> dict:
    """The report with every worker's numbers added (see the module docstring)."""
    activity = state.activity
    merged = Merged(activity.snapshots(), activity.clock())
    workers = merged.live()
    own_breakers = not state.router.cooldowns.shared
    own_quotas = not state.quotas.shared
    threshold = state.router.cooldowns.threshold
    for deployment in report["deployments"]:
        deployment["activity"] = deployment_activity(merged, deployment["key"])
        if own_breakers:
            _merge_breakers(deployment, workers, merged.now, threshold)
        if own_quotas:
            _merge_quota(deployment["quota"], Owner.DEPLOYMENT.key(deployment["key"]), workers)
        if deployment["state"] == "healthy" and deployment["consecutive_failures"]:
            # Failed lately, but not (yet) enough to cool down.
            deployment["state"] = "failing"
    for token in report["tokens"]:
        if own_quotas:
            _merge_quota(token["quota"], Owner.TOKEN.key(token["name"]), workers)
    board = activity.board
    report["activity"] = {
        "workers": len(workers),
        "scope": board.scope if board is not None else "this worker",
        "minutes": MINUTES,
        "recent_minutes": RECENT_MINUTES,
        "generated_at": round(merged.now, 3),
        "requests_in_flight": sum(d["activity"]["in_flight"] for d in report["deployments"]),
        "last_errors": merged.errors(),
        "costs_today": merged.costs(),
        "cache": cache_numbers(state.config),
    }
    return report


def _merge_breakers(deployment: dict, workers: list[dict], now: float, threshold: int) -> None:
    """A deployment cooling down in any worker is shown cooling down (until the latest time)."""
    until, failures = None, 0
    for live in workers:
        entry = (live.get("breakers") or {}).get(deployment["key"])
        if not entry:
            continue
        opened, count = entry
        if opened is not None and opened > now:
            until = opened if until is None else max(until, opened)
        failures = max(failures, int(count))
    if until is not None:
        state = "cooling_down"
    elif failures >= threshold:
        state = "probing"
    else:
        state = "healthy"
    deployment.update(
        state=state,
        cooling_down_until=until,
        cooling_down_for_seconds=round(until - now, 1) if until else None,
        consecutive_failures=failures,
    )


def _merge_quota(quota: dict, owner: str, workers: list[dict]) -> None:
    """Each worker counts alone in memory: what is left is the limit less all of their use."""
    for name, window in quota.items():
        if window.get("remaining") is None:
            continue
        used = sum(
            float((live.get("quota_used") or {}).get(owner, {}).get(name, 0)) for live in workers
        )
        window["remaining"] = _round(max(0.0, window["limit"] - used))


def _round(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 6)


def cache_numbers(config) -> dict:
    """The response cache's hits and misses from its metric (every worker of this host)."""
    cache = getattr(config, "cache", None)
    enabled = bool(getattr(cache, "enabled", False))
    counts = _metric_totals(CACHE_METRIC, "result") if enabled else {}
    hits, misses = counts.get("hit", 0.0), counts.get("miss", 0.0)
    looked_up = hits + misses
    return {
        "enabled": enabled,
        "hits": int(hits),
        "misses": int(misses),
        "bypassed": int(counts.get("bypass", 0.0)),
        "hit_rate": round(hits / looked_up, 4) if looked_up else None,
    }


def _metric_totals(family_name: str, label: str) -> dict[str, float]:
    """A counter's totals by one label, from every worker's metric files (or this process)."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        from prometheus_client.multiprocess import MultiProcessCollector

        # Counters only: the histograms' files are most of the directory.
        families = MultiProcessCollector.merge(glob.glob(os.path.join(directory, "counter_*.db")))
    else:
        from prometheus_client import REGISTRY

        families = REGISTRY.collect()
    totals: dict[str, float] = {}
    for family in families:
        if family.name != family_name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.labels.get(label, "")
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals
