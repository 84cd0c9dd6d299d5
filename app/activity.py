"""Recent activity per deployment, the same whichever worker is asked: for the status page.

Each worker counts upstream attempts (requests, errors, latency per minute), the last errors and
today's cost in its own memory: one lock and a few dict updates per attempt, no storage round trip
on the request path. A background thread publishes that worker's snapshot about once a second
(only when something changed, else every few seconds as a heartbeat) to a board every worker
reads: a Redis hash when the rate-limit storage is Redis (every worker of every host), else a file
per worker in the Prometheus multiprocess directory (every worker of this host). A reader merges
its own live numbers with every other worker's last snapshot.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import tempfile
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .cooldown import LogThrottle
from .redact import scrub

logger = logging.getLogger(__name__)

MINUTES = 60  # the history kept per deployment, in minutes (the sparklines)
RECENT_MINUTES = 5  # "requests and errors in the last minutes"
FLUSH_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0
# A snapshot older than this is a worker that is gone: nothing of it is in flight any more.
LIVE_SECONDS = 15.0
KEEP_SECONDS = 26 * 3600  # snapshots of gone workers still count for today's cost
LAST_ERRORS = 20
MESSAGE_CHARS = 300
REDIS_KEY = "aiproxy:activity:workers"
FILE_PREFIX = "ai-proxy-activity-"
MAX_SNAPSHOT_BYTES = 4 * 1024 * 1024


def _now() -> float:
    return time.time()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def utc_day(when: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(when))


@dataclass
class Minute:
    """One deployment's attempts in one minute."""

    requests: int = 0
    errors: int = 0
    latency_ms: float = 0.0  # summed over successful attempts
    timed: int = 0  # successful attempts (latency is latency_ms / timed)

    def add(self, other: list) -> None:
        self.requests += int(other[0])
        self.errors += int(other[1])
        self.latency_ms += float(other[2])
        self.timed += int(other[3])

    def as_list(self) -> list:
        return [self.requests, self.errors, round(self.latency_ms, 1), self.timed]


class FileBoard:
    """Snapshots as one file per worker in a directory every worker of this host shares."""

    scope = "every worker of this host"

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def publish(self, worker: str, data: bytes) -> None:
        target = self.directory / f"{FILE_PREFIX}{worker.rpartition(':')[2]}.json"
        # Written whole, then renamed: a reader never sees half a snapshot.
        fd, tmp = tempfile.mkstemp(prefix=".tmp-activity-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def read(self) -> list[bytes]:
        found = []
        for path in self.directory.glob(f"{FILE_PREFIX}*.json"):
            try:
                if path.stat().st_size <= MAX_SNAPSHOT_BYTES:
                    found.append(path.read_bytes())
            except OSError:
                continue  # removed while listed
        return found

    def forget(self, worker: str) -> None:
        (self.directory / f"{FILE_PREFIX}{worker.rpartition(':')[2]}.json").unlink(missing_ok=True)


class RedisBoard:
    """Snapshots as fields of one Redis hash, shared by every worker of every host."""

    scope = "every worker of every host sharing the Redis"

    def __init__(self, client) -> None:
        self.client = client

    def publish(self, worker: str, data: bytes) -> None:
        self.client.hset(REDIS_KEY, worker, data)

    def read(self) -> list[bytes]:
        return list(self.client.hgetall(REDIS_KEY).values())

    def forget(self, worker: str) -> None:
        self.client.hdel(REDIS_KEY, worker)


def make_board(redis_client) -> FileBoard | RedisBoard | None:
    """Redis when quotas use it; else the multiprocess metrics directory; else none (one worker)."""
    if redis_client is not None:
        return RedisBoard(redis_client)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        return FileBoard(directory)
    return None


class Activity:
    """This worker's recent activity, and the merged view of every worker's."""

    def __init__(
        self,
        board: FileBoard | RedisBoard | None = None,
        clock: Callable[[], float] | None = None,
        live: Callable[[], dict] | None = None,
    ) -> None:
        self.board = board
        # time.time looked up at each call (a default argument would keep whatever function
        # time.time was when this module was first imported: a test's frozen clock, say).
        self.clock = clock or _now
        # What the worker adds to its snapshot at publishing time (requests in flight, and the
        # cooldowns and quotas a worker keeps in its own memory).
        self.live = live or dict
        self.errors_publishing = 0
        self._lock = threading.Lock()
        self._minutes: dict[str, dict[int, Minute]] = {}
        self._errors: deque[dict] = deque(maxlen=LAST_ERRORS)
        self._costs: dict[tuple[str, str, str], list] = {}  # (day, token, model) -> [tok, usd, n]
        self._day = ""
        self._day_starts = -1.0e12
        self._changed = False
        self._pid: int | None = None
        self._worker = ""
        self._throttle = LogThrottle()

    # -- the request path ---------------------------------------------------------------------

    def attempt(
        self, key: str, outcome: str, seconds: float, model: str = "", error: object = None
    ) -> None:
        """Count one upstream attempt of a deployment by its outcome (`success`, `retryable`,
        `client_error`); a failure's status and (scrubbed) message join the last errors."""
        now = self.clock()
        minute = int(now // 60)
        with self._lock:
            bucket = self._minutes.setdefault(key, {}).get(minute)
            if bucket is None:
                bucket = self._minutes[key][minute] = Minute()
                self._trim(self._minutes[key], minute)
            bucket.requests += 1
            if outcome == "success":
                bucket.latency_ms += seconds * 1000
                bucket.timed += 1
            elif outcome == "retryable":
                bucket.errors += 1
            self._changed = True
        if error is not None:
            entry = {
                "time": round(now, 3),
                "deployment": key,
                "model": model,
                "status": getattr(error, "upstream_status", None) or getattr(error, "status", None),
                "message": scrub(str(getattr(error, "message", error)))[:MESSAGE_CHARS],
            }
            with self._lock:
                self._errors.append(entry)
        self._ensure_publisher()

    def charge(self, token: str, model: str, tokens: int, cost: float) -> None:
        """Count an answer's tokens and cost for today's totals."""
        now = self.clock()
        with self._lock:
            if not self._day_starts <= now < self._day_starts + 86400:
                # A new day (UTC) starts from nothing.
                self._costs, self._day = {}, utc_day(now)
                self._day_starts = now - now % 86400
            entry = self._costs.setdefault((self._day, token, model), [0, 0.0, 0])
            entry[0] += int(tokens)
            entry[1] += float(cost)
            entry[2] += 1
            self._changed = True
        self._ensure_publisher()

    @staticmethod
    def _trim(minutes: dict[int, Minute], now: int) -> None:
        for old in [m for m in minutes if m <= now - MINUTES]:
            del minutes[old]

    # -- snapshots ----------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """This worker's numbers, as published."""
        now = self.clock()
        oldest = int(now // 60) - MINUTES
        with self._lock:
            minutes = {
                key: {str(m): b.as_list() for m, b in buckets.items() if m > oldest}
                for key, buckets in self._minutes.items()
            }
            errors = list(self._errors)
            costs = [[*key, *value] for key, value in self._costs.items()]
        return {
            "worker": self._worker or worker_id(),
            "time": now,
            "minutes": minutes,
            "errors": errors,
            "costs": costs,
            "live": self.live(),
        }

    def publish(self) -> None:
        """Put this worker's snapshot on the board (the publisher thread calls this)."""
        if self.board is None:
            return
        with self._lock:
            self._changed = False
        data = json.dumps(self.snapshot(), separators=(",", ":")).encode()
        try:
            self.board.publish(self._worker or worker_id(), data)
        except Exception as err:  # noqa: BLE001 - named fail point: the page shows less, serving goes on.
            self.errors_publishing += 1
            if self._throttle.ready():
                logger.warning("status page activity not published (%s)", type(err).__name__)

    def _ensure_publisher(self) -> None:
        """One publisher thread per worker process, started on first use (after the fork)."""
        if self.board is None or self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._worker = worker_id()
        thread = threading.Thread(
            target=_publish_forever,
            args=(weakref.ref(self),),
            name="ai-proxy-activity",
            daemon=True,
        )
        thread.start()

    def changed(self) -> bool:
        return self._changed

    # -- reading ------------------------------------------------------------------------------

    def snapshots(self) -> list[dict]:
        """Every worker's snapshot: this one's live, the others' as last published."""
        self._ensure_publisher()
        own = self.snapshot()
        found = [own]
        if self.board is None:
            return found
        try:
            raw = self.board.read()
        except Exception as err:  # noqa: BLE001 - the page then shows this worker alone.
            if self._throttle.ready():
                logger.warning("status page activity not read (%s)", type(err).__name__)
            return found
        now = self.clock()
        for data in raw:
            snap = read_snapshot(data)
            if snap is None or snap["worker"] == own["worker"]:
                continue
            if now - snap["time"] > KEEP_SECONDS:
                self._forget(snap["worker"])
                continue
            found.append(snap)
        return found

    def _forget(self, worker: object) -> None:
        if isinstance(worker, str) and self.board is not None:
            try:
                self.board.forget(worker)
            except Exception:  # noqa: BLE001 - tidying only.
                pass


def read_snapshot(data: bytes) -> dict | None:
    """A published snapshot in the shape this module writes, or None for anything else (a
    board is shared: a file cut short or written by another version must not break the page)."""
    try:
        snap = json.loads(data)
        live = snap.get("live") or {}
        return {
            "worker": _text(snap["worker"]),
            "time": _finite(snap["time"]),
            "minutes": {
                _text(key): {
                    _text(m): [int(v[0]), int(v[1]), _finite(v[2]), int(v[3])]
                    for m, v in buckets.items()
                }
                for key, buckets in snap.get("minutes", {}).items()
            },
            "errors": [
                {
                    "time": _finite(e["time"]),
                    "deployment": _text(e.get("deployment", "")),
                    "model": _text(e.get("model", "")),
                    "status": e["status"] if isinstance(e.get("status"), int) else None,
                    "message": _text(e.get("message", ""))[:MESSAGE_CHARS],
                }
                for e in snap.get("errors", [])[:LAST_ERRORS]
            ],
            "costs": [
                [_text(d), _text(t), _text(m), int(n), _finite(usd), int(c)]
                for d, t, m, n, usd, c in snap.get("costs", [])
            ],
            "live": {
                "in_flight": {_text(k): int(v) for k, v in live.get("in_flight", {}).items()},
                "breakers": {
                    _text(k): [None if v[0] is None else _finite(v[0]), int(v[1])]
                    for k, v in live.get("breakers", {}).items()
                },
                "quota_used": {
                    _text(owner): {_text(name): _finite(used) for name, used in windows.items()}
                    for owner, windows in live.get("quota_used", {}).items()
                },
            },
        }
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError):
        return None


def _finite(value: object) -> float:
    """A number a snapshot may hold: JSON lets `Infinity` and `NaN` through, the page cannot."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value


def _publish_forever(ref: weakref.ref) -> None:
    last = 0.0
    while True:
        time.sleep(FLUSH_SECONDS)
        activity = ref()
        if activity is None:
            return
        now = time.monotonic()
        if activity.changed() or now - last >= HEARTBEAT_SECONDS:
            activity.publish()
            last = now
        del activity


# -- merging ----------------------------------------------------------------------------------


@dataclass
class Merged:
    """Every worker's snapshots added up, as the status page shows them."""

    snapshots: list[dict]
    now: float

    def live(self) -> list[dict]:
        """The `live` parts of workers still running (this one's included)."""
        return [
            snap.get("live") or {}
            for snap in self.snapshots
            if self.now - float(snap.get("time", 0)) <= LIVE_SECONDS
        ]

    def minutes(self, key: str) -> list[Minute]:
        """A deployment's last MINUTES minutes, oldest first, every worker's added up."""
        current = int(self.now // 60)
        series = [Minute() for _ in range(MINUTES)]
        for snap in self.snapshots:
            for minute, values in (snap.get("minutes", {}).get(key) or {}).items():
                index = MINUTES - 1 - (current - int(minute))
                if 0 <= index < MINUTES:
                    series[index].add(values)
        return series

    def in_flight(self, key: str) -> int:
        return sum(int((live.get("in_flight") or {}).get(key, 0)) for live in self.live())

    def errors(self) -> list[dict]:
        merged = [e for snap in self.snapshots for e in snap.get("errors", [])]
        merged.sort(key=lambda e: e.get("time", 0), reverse=True)
        return merged[:LAST_ERRORS]

    def costs(self) -> list[dict]:
        """Today's tokens and cost per client token and model, every worker's added up."""
        today = utc_day(self.now)
        totals: dict[tuple[str, str], list] = {}
        for snap in self.snapshots:
            for day, token, model, tokens, usd, count in snap.get("costs", []):
                if day != today:
                    continue
                entry = totals.setdefault((token, model), [0, 0.0, 0])
                entry[0] += tokens
                entry[1] += usd
                entry[2] += count
        return [
            {"token": token, "model": model, "tokens": t, "cost_usd": round(usd, 6), "requests": n}
            for (token, model), (t, usd, n) in sorted(totals.items())
        ]


def deployment_activity(merged: Merged, key: str) -> dict:
    """A deployment's shared numbers: in flight, latency, requests and errors per minute."""
    series = merged.minutes(key)
    recent = series[-RECENT_MINUTES:]
    timed = [m for m in series[-15:] if m.timed]
    total_ms, count = sum(m.latency_ms for m in timed), sum(m.timed for m in timed)
    return {
        "in_flight": merged.in_flight(key),
        "latency_ms": round(total_ms / count, 1) if count else None,
        "requests_recent": sum(m.requests for m in recent),
        "errors_recent": sum(m.errors for m in recent),
        "requests_per_minute": [m.requests for m in series],
        "errors_per_minute": [m.errors for m in series],
    }
