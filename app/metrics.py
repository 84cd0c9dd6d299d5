"""Prometheus metrics: what the proxy serves, how fast, how it fails, what it costs.

Under gunicorn, `conf/gunicorn.conf.py` sets PROMETHEUS_MULTIPROC_DIR before any worker imports
this module, so every worker writes its samples there and `/metrics` adds them up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)


class _ProcessId:
    """This process's id, read once and again after each fork (`os.register_at_fork`).

    prometheus_client's multiprocess values ask for the process id on every increment, to
    notice a fork (then each process writes its own files): `os.getpid` is a system call, about
    fifteen per request. The id kept here changes exactly when a fork makes a new process."""

    def __init__(self) -> None:
        self.value = os.getpid()
        os.register_at_fork(after_in_child=self.refresh)

    def refresh(self) -> None:
        self.value = os.getpid()

    def __call__(self) -> int:
        return self.value


PROCESS_ID = _ProcessId()
if values.ValueClass is not values.MutexValue:
    # Multiprocess mode (PROMETHEUS_MULTIPROC_DIR set): the same values, with the kept id.
    values.ValueClass = values.MultiProcessValue(process_identifier=PROCESS_ID)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "ai_proxy_requests_total",
    "Client requests answered, by surface, model served, provider and status.",
    ["surface", "model", "provider", "status"],
)
REQUEST_SECONDS = Histogram(
    "ai_proxy_request_duration_seconds",
    "Time from request to the last byte of the answer.",
    ["surface", "model"],
    buckets=LATENCY_BUCKETS,
)
FIRST_BYTE_SECONDS = Histogram(
    "ai_proxy_time_to_first_byte_seconds",
    "Time from request to the first answer byte the upstream sent (streams: first chunk).",
    ["surface", "model"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_SECONDS = Histogram(
    "ai_proxy_upstream_duration_seconds",
    "Time one upstream attempt took until its answer (streams: its first chunk).",
    ["model", "provider", "outcome"],
    buckets=LATENCY_BUCKETS,
)
ATTEMPTS = Counter(
    "ai_proxy_upstream_attempts_total",
    "Upstream attempts by outcome: success, retryable (moved on), client_error.",
    ["model", "provider", "outcome"],
)
FALLBACKS = Counter(
    "ai_proxy_fallbacks_total",
    "Requests that moved on from a failed deployment to the next candidate.",
    ["model"],
)
COOLDOWNS = Counter(
    "ai_proxy_cooldowns_total",
    "Times a deployment was put in cooldown.",
    ["model", "provider"],
)
TOKENS = Counter(
    "ai_proxy_tokens_total",
    "Tokens charged, by model, client token and kind (prompt or completion).",
    ["model", "token", "kind"],
)
COST = Counter(
    "ai_proxy_cost_usd_total",
    "Cost in USD at the configured prices, by model and client token.",
    ["model", "token"],
)
QUOTA_REFUSALS = Counter(
    "ai_proxy_quota_refusals_total",
    "Requests refused or deployments skipped for quota, by scope and limit.",
    ["scope", "limit"],
)
STORAGE_ERRORS = Counter(
    "ai_proxy_storage_errors_total",
    "Rate-limit or cooldown storage failures.",
    ["what"],
)
QUOTA_SETTLE_FAILURES = Counter(
    "ai_proxy_quota_settle_failures_total",
    "Quota settlements the storage refused twice (their reservations expire with their windows).",
)
IN_FLIGHT = Gauge(
    "ai_proxy_requests_in_flight",
    "Requests being served now (streams included).",
    multiprocess_mode="livesum",
)
STREAMS_IN_FLIGHT = Gauge(
    "ai_proxy_streams_in_flight",
    "Streams open to clients now.",
    multiprocess_mode="livesum",
)
CACHE_REQUESTS = Counter(
    "ai_proxy_cache_requests_total",
    "Requests by what the response cache did: hit, miss or bypass.",
    ["result"],
)
CACHE_STORED_BYTES = Counter(
    "ai_proxy_cache_stored_bytes_total",
    "Bytes of answers written to the response cache.",
)
CACHE_EVICTIONS = Counter(
    "ai_proxy_cache_evictions_total",
    "Answers dropped from a memory cache to stay within max_memory_bytes.",
)
CACHE_MEMORY_BYTES = Gauge(
    "ai_proxy_cache_memory_bytes",
    "Bytes the memory caches hold now (all workers).",
    multiprocess_mode="livesum",
)
CACHE_ERRORS = Counter(
    "ai_proxy_cache_errors_total",
    "Response cache storage faults, by operation (read, write, lock, corrupt, delete).",
    ["op"],
)


# Label sets remembered per metric (beyond this, children are looked up each time).
MAX_CACHED_CHILDREN = 4096


def _remember_children(metric) -> None:
    """Make `metric.labels(...)` remember the child of each label set it has handed out.

    prometheus_client checks and converts the values and takes a lock on every call; a request
    asks for about ten labelled children, mostly the same few, so each is looked up once.
    """
    lookup = metric.labels
    children: dict[tuple, object] = {}

    def labels(*values, **named):
        if named:
            return lookup(*values, **named)
        child = children.get(values)
        if child is None:
            child = lookup(*values)
            if len(children) < MAX_CACHED_CHILDREN:
                children[values] = child
        return child

    metric.labels = labels


for _metric in (
    REQUESTS,
    REQUEST_SECONDS,
    FIRST_BYTE_SECONDS,
    UPSTREAM_SECONDS,
    ATTEMPTS,
    FALLBACKS,
    COOLDOWNS,
    TOKENS,
    COST,
    QUOTA_REFUSALS,
    STORAGE_ERRORS,
):
    _remember_children(_metric)


def exposition() -> tuple[bytes, str]:
    """The Prometheus text for every worker (multiprocess) or for this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
