"""Cooldowns: a small circuit breaker per deployment, in memory or shared through Redis.

`failure_threshold` consecutive retryable failures open a deployment's breaker for
`cooldown_seconds` (or the upstream's Retry-After). When that passes, one request probes it: a
success closes the breaker, a failure opens it again. With Redis every worker and host sees the
same state; a Redis that fails is logged and treated as "no cooldown" (fail open).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import metrics
from .upstream import upstream_wait

logger = logging.getLogger(__name__)

DEFAULT_PROBE_SECONDS = 60.0
FAILURE_MEMORY_SECONDS = 24 * 3600
KEY_PREFIX = "aiproxy:cooldown:"


@dataclass(frozen=True)
class BreakerState:
    """A deployment's breaker: open until a time (epoch seconds), and its failure streak."""

    open_until: float | None = None
    failures: int = 0


class LogThrottle:
    """Lets a repeated warning through at most once per `interval` seconds."""

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.clock = clock
        self._next = 0.0
        self._lock = threading.Lock()

    def ready(self) -> bool:
        with self._lock:
            now = self.clock()
            if now < self._next:
                return False
            self._next = now + self.interval
            return True


def _now() -> float:
    return time.time()


class MemoryBreakers:
    """Breaker state for one worker process."""

    def __init__(self, clock: Callable[[], float] = _now) -> None:
        self.clock = clock
        self._open: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._probes: dict[str, float] = {}
        self._lock = threading.Lock()

    def states(self, keys: Sequence[str]) -> list[BreakerState]:
        now = self.clock()
        with self._lock:
            return [
                BreakerState(
                    open_until=until if (until := self._open.get(key)) and until > now else None,
                    failures=self._failures.get(key, 0),
                )
                for key in keys
            ]

    def add_failure(self, key: str) -> int:
        with self._lock:
            self._failures[key] = self._failures.get(key, 0) + 1
            return self._failures[key]

    def open(self, key: str, until: float) -> None:
        with self._lock:
            self._open[key] = until
            self._probes.pop(key, None)

    def reset(self, key: str) -> None:
        with self._lock:
            self._open.pop(key, None)
            self._failures.pop(key, None)
            self._probes.pop(key, None)

    def take_probe(self, key: str, ttl: float) -> bool:
        now = self.clock()
        with self._lock:
            if self._probes.get(key, 0.0) > now:
                return False
            self._probes[key] = now + ttl
            return True

    def release_probe(self, key: str) -> None:
        with self._lock:
            self._probes.pop(key, None)


class RedisBreakers:
    """Breaker state in Redis, shared by every worker and host using it; keys expire by TTL."""

    def __init__(self, client, clock: Callable[[], float] = _now) -> None:
        self.client = client
        self.clock = clock

    @staticmethod
    def _keys(key: str) -> tuple[str, str, str]:
        base = KEY_PREFIX + key
        return base + ":open", base + ":failures", base + ":probe"

    @staticmethod
    def state_keys(key: str) -> tuple[str, str]:
        """The keys `states` reads for one deployment (the quota batch reads them as well)."""
        return RedisBreakers._keys(key)[:2]

    def states(self, keys: Sequence[str]) -> list[BreakerState]:
        names = [name for key in keys for name in self._keys(key)[:2]]
        values = self.client.mget(names) if names else []
        now = self.clock()
        states = []
        for i in range(0, len(values), 2):
            until = float(values[i]) if values[i] is not None else None
            if until is not None and not math.isfinite(until):
                until = None  # not a time this proxy writes: no cooldown (fail open)
            failures = int(values[i + 1]) if values[i + 1] is not None else 0
            states.append(BreakerState(until if until and until > now else None, failures))
        return states

    def add_failure(self, key: str) -> int:
        _, failures, _ = self._keys(key)
        pipe = self.client.pipeline()
        pipe.incr(failures)
        pipe.expire(failures, FAILURE_MEMORY_SECONDS)
        count, _ = pipe.execute()
        return int(count)

    def open(self, key: str, until: float) -> None:
        opened, _, probe = self._keys(key)
        ttl_ms = max(1, int((until - self.clock()) * 1000))
        pipe = self.client.pipeline()
        pipe.set(opened, repr(until), px=ttl_ms)
        pipe.delete(probe)
        pipe.execute()

    def reset(self, key: str) -> None:
        self.client.delete(*self._keys(key))

    def take_probe(self, key: str, ttl: float) -> bool:
        _, _, probe = self._keys(key)
        return bool(self.client.set(probe, "1", nx=True, px=max(1, int(ttl * 1000))))

    def release_probe(self, key: str) -> None:
        self.client.delete(self._keys(key)[2])


class Cooldowns:
    """The breakers of all deployments, with the policy: threshold, cooldown, probing."""

    def __init__(
        self,
        backend: MemoryBreakers | RedisBreakers,
        threshold: int = 1,
        cooldown_seconds: float = 60.0,
        probe_seconds: float = DEFAULT_PROBE_SECONDS,
    ) -> None:
        self.backend = backend
        self.threshold = max(1, threshold)
        self.cooldown_seconds = cooldown_seconds
        self.probe_seconds = probe_seconds
        self.errors = 0
        self._throttle = LogThrottle()

    @property
    def clock(self) -> Callable[[], float]:
        return self.backend.clock

    @property
    def shared(self) -> bool:
        """Every worker reads the same breakers (kept in Redis)."""
        return isinstance(self.backend, RedisBreakers)

    def states(self, keys: Sequence[str]) -> list[BreakerState]:
        """Each key's state; all closed if the storage fails (fail open)."""
        try:
            return self.backend.states(keys)
        except Exception as err:  # noqa: BLE001 - named fail-open point: routing goes on.
            self._storage_failed("read", err)
            return [BreakerState() for _ in keys]

    def needs_probe(self, state: BreakerState) -> bool:
        """Past its cooldown but not yet proven healthy: only one request may try it."""
        return state.open_until is None and state.failures >= self.threshold

    def take_probe(self, key: str) -> bool:
        try:
            return self.backend.take_probe(key, self.probe_seconds)
        except Exception as err:  # noqa: BLE001 - fail open: let the request try it.
            self._storage_failed("probe", err)
            return True

    def release_probe(self, key: str) -> None:
        """Give a probe back that ended with no verdict on the deployment (its client left,
        its request was refused before reaching the upstream): the next request probes at
        once, rather than every request skipping the deployment until the probe expires."""
        try:
            self.backend.release_probe(key)
        except Exception as err:  # noqa: BLE001 - the probe expires by itself.
            self._storage_failed("probe", err)

    def failure(self, key: str, retry_after: float | None = None) -> float | None:
        """Count a retryable failure; returns when the breaker opened until, if it did."""
        retry_after = upstream_wait(retry_after)
        if not self.cooldown_seconds and not retry_after:
            return None  # cooldown_seconds: 0 turns cooldowns off.
        try:
            failures = self.backend.add_failure(key)
            if failures < self.threshold and not retry_after:
                return None
            # An upstream's Retry-After says exactly when to come back, so it wins.
            until = self.clock() + (retry_after if retry_after else self.cooldown_seconds)
            self.backend.open(key, until)
            logger.warning("deployment %s cools down for %.0fs", key, until - self.clock())
            return until
        except Exception as err:  # noqa: BLE001 - fail open: the failure is not remembered.
            self._storage_failed("write", err)
            return None

    def success(self, key: str, state: BreakerState | None = None) -> None:
        """Close the breaker; skipped when the state read showed nothing to clear."""
        if state is not None and not state.failures and state.open_until is None:
            return
        try:
            self.backend.reset(key)
        except Exception as err:  # noqa: BLE001 - fail open.
            self._storage_failed("write", err)

    def _storage_failed(self, what: str, err: Exception) -> None:
        self.errors += 1
        metrics.STORAGE_ERRORS.labels("cooldown").inc()
        if self._throttle.ready():
            logger.warning(
                "cooldown storage %s failed (%s); routing ignores cooldowns",
                what,
                type(err).__name__,
            )
