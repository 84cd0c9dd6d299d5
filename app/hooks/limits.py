"""limits internals the proxy relies on: a memory storage swept by one thread, not timers.

`SweptMemoryStorage` overrides MemoryStorage's private `__schedule_expiry` (called on every
hit; it starts a 10 ms `threading.Timer` whenever the last one has run out) and sweeps the
parent's `events`, `expirations`, `storage` and `locks` itself. tests/test_hooks_limits.py fails
if limits changes any of these.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
import weakref

from limits.storage import MemoryStorage

from .limits_memory import batch_lock

logger = logging.getLogger(__name__)

DEFAULT_SWEEP_SECONDS = 1.0
STALE_SWEEPS = 10  # sweeps missed before a hit starts the sweeper again


class SweptMemoryStorage(MemoryStorage):
    """limits' memory storage, its expired entries swept by one long-lived thread per process.

    MemoryStorage starts a new 10 ms `threading.Timer` on a hit whenever the last one has run
    out: under steady traffic that is a thread start every 10 ms, and the request that starts
    one waits for the new thread to run (tens of microseconds, more when the GIL is busy).
    Expiry is only clean-up (every read checks the times itself), so sweeping once a second off
    the request threads keeps memory bounded the same way.
    """

    sweep_seconds = DEFAULT_SWEEP_SECONDS
    # Its counters are limits' own (get/incr/decr not overridden): the quota batch may work on
    # them directly (app.hooks.limits_memory.MemoryBatch). A subclass does not inherit this.
    plain_counters = True
    _live: weakref.WeakSet[SweptMemoryStorage] = weakref.WeakSet()
    _sweeper: threading.Thread | None = None
    _sweeper_lock = threading.Lock()
    _last_sweep = 0.0  # time.monotonic() when the sweeper last went round

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.timer.cancel()  # the parent's first 10 ms timer: the sweeper does its work
        cls = type(self)
        with cls._sweeper_lock:
            cls._live.add(self)
        cls._ensure_sweeper()

    @classmethod
    def _ensure_sweeper(cls) -> None:
        with cls._sweeper_lock:
            if cls._sweeper is None:
                # A child forked after a storage was made (gunicorn --preload) has the storage
                # but not the thread: it starts one of its own.
                os.register_at_fork(after_in_child=cls._restart_in_child)
            if cls._sweeper is None or not cls._sweeper.is_alive():
                cls._start_sweeper()

    @classmethod
    def _restart_in_child(cls) -> None:
        cls._sweeper_lock = threading.Lock()
        if cls._live:
            cls._start_sweeper()

    @classmethod
    def _start_sweeper(cls) -> None:
        cls._last_sweep = time.monotonic()
        cls._sweeper = threading.Thread(
            target=cls._sweep_forever, name="ai-proxy-quota-sweeper", daemon=True
        )
        cls._sweeper.start()

    def _MemoryStorage__schedule_expiry(self) -> None:
        """Called on every hit in place of the parent's timer start: a sweeper that has not
        swept for a while (it died, say) is started again."""
        if time.monotonic() - type(self)._last_sweep > STALE_SWEEPS * type(self).sweep_seconds:
            type(self)._ensure_sweeper()

    def sweep(self) -> None:
        """Drop the entries and counters whose windows have passed.

        As limits' own expiry pass, but reading with .get(): a request thread may drop a
        counter between the listing and the read.
        """
        now = time.time()
        for key in list(self.events):
            with self.locks[key]:
                events = self.events.get(key)
                if events:
                    kept = bisect.bisect_left(events, -now, key=lambda event: -event.expiry)
                    self.events[key] = events[:kept]
                if not self.events.get(key):
                    self.locks.pop(key, None)
        # Under the quota batch's lock: a batch may be renewing a counter this pass would drop.
        with batch_lock(self):
            for key in list(self.expirations):
                if self.expirations.get(key, now) <= now:
                    self.storage.pop(key, None)
                    self.expirations.pop(key, None)
                    self.locks.pop(key, None)

    @classmethod
    def _sweep_forever(cls) -> None:
        while True:
            cls._last_sweep = time.monotonic()
            time.sleep(cls.sweep_seconds)
            with cls._sweeper_lock:
                storages = list(cls._live)
            for storage in storages:
                try:
                    storage.sweep()
                except Exception:  # noqa: BLE001 - clean-up must never end the sweeper.
                    logger.exception("sweeping the in-memory quota storage failed")
