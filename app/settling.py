"""Settling quota reservations off the request thread, in batches, in order for this process.

A finished request's settle (its reservation replaced by the real usage) is queued here. The next
reservation this process makes carries everything queued in its own round trip, applied before
it is judged; what no reservation takes within LINGER_SECONDS one thread sends in one round trip
(under load many requests share it). Either way the request that ends does not wait, and within
a process every admission sees every earlier answer's real usage, as if settling were
synchronous.

The thread is woken by a settle only when it has been idle; while settles keep coming it wakes by
its own clock, every TICK_SECONDS, and sends what has waited LINGER_SECONDS or more (so a settle
no reservation carries is sent within LINGER_SECONDS + TICK_SECONDS). Under steady traffic
reservations carry everything, and a wake-up per settle (and another at its linger's end), two
thread switches per request, cost more CPU than the settles: about 70 us a request at c=1 on the
benchmark machine. After IDLE_SECONDS with nothing queued the thread waits for a notice again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

# How long an admission waits for earlier settles (a storage that hangs must not stall it).
WAIT_SECONDS = 0.5
# How long queued settles wait for an admission to carry them before the thread sends them.
LINGER_SECONDS = 0.002
# How often the thread looks at the queue while settles keep coming.
TICK_SECONDS = 0.01
# With nothing queued this long the thread stops ticking and waits for a notice.
IDLE_SECONDS = 1.0


class Settler:
    """Queues settling batches and applies them from one thread: `apply(changes)` sends one
    batch (it may raise); `failed(error, final)` is told of each failed attempt (a batch is
    retried once)."""

    def __init__(
        self,
        apply: Callable[[list], None],
        failed: Callable[[Exception, bool], None],
        retryable: Callable[[Exception], bool] = lambda err: True,
    ) -> None:
        self._apply = apply
        self._failed = failed
        # Whether a failed batch may be sent again (not when the storage may have applied it).
        self._retryable = retryable
        self._new_lock()
        self._pending: list = []
        self._since = 0.0  # when the oldest queued settle was queued (monotonic)
        self._idle = False  # the thread waits for work with no deadline (only a notice wakes it)
        self._queued = 0  # batches queued so far
        self._done = 0  # batches settled (or given up) so far
        self._thread: threading.Thread | None = None
        self._sending = False  # the thread has a batch on its way
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (settler := me()) and settler._after_fork())

    def _new_lock(self) -> None:
        # One lock; the thread waits on `_work`, callers of `wait` on `_settled`.
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._settled = threading.Condition(self._lock)

    def put(self, changes: Sequence) -> None:
        """Queue one request's changes; they reach the storage in the next round trip."""
        if not changes:
            return
        with self._lock:
            self._queue(changes)
            self._queued += 1

    def _queue(self, changes: Sequence, first: bool = False) -> None:
        # Called with the lock held.
        if not self._pending:
            self._since = time.monotonic()
        if first:
            self._pending[:0] = changes
        else:
            self._pending.extend(changes)
        self._ensure_thread()
        if self._idle:
            self._idle = False
            self._work.notify()

    def wait(self, timeout: float = WAIT_SECONDS) -> bool:
        """Until every batch queued before this call is settled (or `timeout` passes)."""
        with self._lock:
            target = self._queued
            if self._done >= target:
                return True
            return self._settled.wait_for(lambda: self._done >= target, timeout)

    def take(self) -> tuple[list, int] | None:
        """Everything queued, for a reservation to carry (and the count it covers); None while
        the thread has a batch on its way (then `wait` for it instead)."""
        with self._lock:
            if self._sending:
                return None
            batch, self._pending = self._pending, []
            return batch, self._queued

    def carried(self, batch: list, upto: int, ok: bool) -> None:
        """A reservation carried `batch` (taken when `upto` batches were queued): settled, or
        back to the queue when its round trip failed."""
        if not batch:
            return
        with self._lock:
            if ok:
                self._done = max(self._done, upto)
                self._settled.notify_all()
            else:
                self._queue(batch, first=True)
                self._since = 0.0  # already waited for a carrier: the thread sends it now
                self._work.notify()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._idle = False
            self._thread = threading.Thread(
                target=self._run, name="ai-proxy-quota-settler", daemon=True
            )
            self._thread.start()

    def _after_fork(self) -> None:
        # A worker forked after the first settle (gunicorn --preload) has the queue but not the
        # thread, and a lock that may have been held mid-copy: both start afresh.
        self._new_lock()
        self._thread = None
        self._idle = False

    def _run(self) -> None:
        while True:
            with self._lock:
                self._next_due()
                batch, self._pending = self._pending, []
                upto = self._queued
                self._sending = True
            try:
                self._send(batch)
            finally:
                with self._lock:
                    self._sending = False
                    self._done = max(self._done, upto)
                    self._settled.notify_all()

    def _next_due(self) -> None:
        """Wait (the lock held) until the queue holds a settle LINGER_SECONDS old: a reservation
        coming sooner carries it in its own round trip. While settles keep coming this thread
        wakes every TICK_SECONDS, not at each one; idle IDLE_SECONDS, it waits for a notice."""
        active = time.monotonic()
        while True:
            now = time.monotonic()
            if self._pending:
                active = now
                if now - self._since >= LINGER_SECONDS:
                    return
                self._work.wait(TICK_SECONDS)
            elif now - active >= IDLE_SECONDS:
                self._idle = True
                while not self._pending:
                    self._work.wait()
                self._idle = False
                active = time.monotonic()
            else:
                self._work.wait(TICK_SECONDS)

    def _send(self, batch: list) -> None:
        for attempt in (1, 2):
            try:
                self._apply(batch)
                return
            except Exception as err:  # noqa: BLE001 - named fail point: the settler never dies.
                final = attempt == 2 or not self._retryable(err)
                try:
                    self._failed(err, final)
                except Exception:  # noqa: BLE001
                    logger.exception("reporting a failed quota settle failed")
                if final:
                    return
