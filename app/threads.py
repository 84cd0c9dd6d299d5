"""The worker's request threads: as many as the load needs, up to THREADS, and no more after it.

gunicorn's gthread worker hands each connection to a `concurrent.futures.ThreadPoolExecutor`,
which starts threads up to its maximum and keeps every one for the life of the worker: after a
burst of 1,000 streams, a worker holds 500 idle threads (their stacks and their malloc arenas)
for good. `ElasticThreadPool` has the same `submit`/`shutdown` interface; a thread idle for
`idle_seconds` ends, and once threads have ended the C heap's free memory is handed back to
the system (`malloc_trim`), so a worker's memory returns near its resting level after a burst.
What else a burst left for threads that are gone (pooled upstream connections) is let go first,
by whoever registered for it with `on_threads_settled`.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from . import watchdog

logger = logging.getLogger(__name__)

# A thread with nothing to do this long ends (a new one starts in well under a millisecond).
DEFAULT_IDLE_SECONDS = 10.0
# The heap is trimmed once threads have stopped ending for this long (a burst's threads end
# together): one malloc_trim for the lot, as it walks the whole heap.
TRIM_AFTER_SECONDS = 1.0
# glibc's mallopt parameter for the number of malloc arenas.
_M_ARENA_MAX = -8


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def limit_arenas(count: int = 2) -> bool:
    """Cap glibc's malloc arenas (by default one per thread, up to 8 per core): with the GIL
    only one thread allocates at a time, and fewer arenas leave less memory stranded in them."""
    return bool(_LIBC and _LIBC.mallopt(_M_ARENA_MAX, count))


def freeze_heap() -> None:
    """Move every object alive now out of the cyclic garbage collector's reach (`gc.freeze`).

    The collector's older-generation sweeps walk every tracked object of those generations; a
    worker's are mostly its modules, app and config, built once and never garbage. Under a
    burst of new streams (hundreds of threads allocating at once) py-spy found about a fifth of
    a worker's GIL time in collections set off by allocations. Frozen, the start-up objects are
    never walked again; what requests create is collected as before.
    """
    gc.collect()
    gc.freeze()


def forget_attribute_names() -> None:
    """Empty CPython's type attribute cache (`sys._clear_type_cache`).

    Each of its 4,096 entries keeps the name it was last looked up by. A name made at run time
    (`getattr(obj, name)` with a new string; `time.struct_time` as `datetime.timetuple` finds
    it, once for every `Date` header gunicorn writes) stays alive until its entry is reused.
    Made during a burst of requests, such names lie scattered over the small-object arenas the
    burst needed, and one live object keeps a whole arena (1 MiB) from going back to the
    system: 500 streams a worker left 44 arenas against 24 at rest, 35 once the cache was
    emptied. Lookups refill it as they go; types keep their version tags (CPython 3.11 never
    reuses one after a clear), so the interpreter's specialised attribute look-ups stay valid.
    """
    clear = getattr(sys, "_clear_type_cache", None)
    if clear is not None:
        clear()


# Bound methods told the number of request threads alive once a wave of ending threads settles.
_ON_SETTLED = watchdog.WeakMethods("releasing what ended threads left failed")


def on_threads_settled(release: Callable[[int], object]) -> None:
    """Call the bound method `release(threads)`, for as long as its object lives, each time a
    wave of ending request threads has settled, with how many are still alive, before the heap
    is trimmed: what it frees goes back to the system with the rest."""
    _ON_SETTLED.add(release)


def trim_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc; elsewhere a no-op)."""
    return bool(_LIBC and _LIBC.malloc_trim(0))


class ElasticThreadPool:
    """A thread pool for gunicorn's gthread worker whose idle threads end.

    `submit(fn, *args)` runs `fn` on a waiting thread, or a new one while fewer than
    `max_workers` run, else queues it, as `ThreadPoolExecutor` does; a thread with no work for
    `idle_seconds` ends. A thread that wakes, by a notice or its timeout, first looks at the
    queue, so no work is left behind by a notice that reached a thread already ending. Threads
    are daemons: gunicorn waits for requests in flight itself (its graceful timeout) before
    the worker exits.
    """

    def __init__(self, max_workers: int, idle_seconds: float = DEFAULT_IDLE_SECONDS) -> None:
        self.max_workers = max(1, max_workers)
        self.idle_seconds = idle_seconds
        # Reentrant: gunicorn calls `shutdown` from its SIGQUIT handler, which runs in the main
        # thread between any two bytecodes, also while that thread is inside `submit` holding
        # the lock; a plain Lock would deadlock there and the worker would never exit.
        self._lock = threading.RLock()
        self._ready = threading.Condition(self._lock)
        self._work: collections.deque = collections.deque()
        self._threads = 0
        self._waiting = 0  # threads waiting for work
        self._shutdown = False
        self._ended = 0  # threads ended since the heap was last trimmed
        self._last_end = 0.0
        # The watchdog's thread trims the heap once a wave of ending threads is over.
        watchdog.WATCHDOG.every(self.trim_if_settled)

    @property
    def threads(self) -> int:
        """Threads alive now."""
        return self._threads

    @property
    def queued(self) -> int:
        """Work submitted and not yet taken by a thread."""
        return len(self._work)

    def submit(self, fn: Callable, /, *args, **kwargs) -> Future:
        future: Future = Future()
        start = False
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._work.append((future, fn, args, kwargs))
            if len(self._work) <= self._waiting:
                # A waiting thread takes it (whichever wakes first: each looks at the queue).
                self._ready.notify()
            elif self._threads < self.max_workers:
                self._threads += 1
                start = True
        if start:
            # Started outside the lock: Thread.start waits for the new thread to run.
            try:
                threading.Thread(target=self._run, name="ai-proxy-request", daemon=True).start()
            except BaseException:
                with self._lock:
                    self._threads -= 1  # never ran: a later submit may start one
                raise
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            cancelled = list(self._work) if cancel_futures else []
            if cancel_futures:
                self._work.clear()
            self._ready.notify_all()
        for item in cancelled:
            item[0].cancel()
        if wait:
            while self._threads:
                time.sleep(0.01)

    def _next(self):
        """The next piece of work, or None once this thread is to end (idle, or shut down)."""
        with self._lock:
            deadline = time.monotonic() + self.idle_seconds
            while not self._work:
                remaining = deadline - time.monotonic()
                if self._shutdown or remaining <= 0:
                    self._thread_ended()
                    return None
                self._waiting += 1
                try:
                    self._ready.wait(remaining)
                finally:
                    self._waiting -= 1
            return self._work.popleft()

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn(*args, **kwargs)
                except BaseException as err:  # noqa: BLE001 - handed to the future
                    future.set_exception(err)
                else:
                    future.set_result(result)
            # Nothing of a finished request stays referenced by an idle thread.
            del item, future, fn, args, kwargs

    def _thread_ended(self) -> None:
        # Called with the lock held.
        self._threads -= 1
        self._ended += 1
        self._last_end = time.monotonic()

    def trim_if_settled(self, now: float | None = None) -> bool:
        """Trim the heap if threads ended and none has for TRIM_AFTER_SECONDS; whether it did."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._ended or now - self._last_end < TRIM_AFTER_SECONDS:
                return False
            self._ended = 0
            threads = self._threads
        _ON_SETTLED.call(threads)
        # What the ended threads' requests left alive (names in the type cache, reference
        # cycles) is freed first, so that whole arenas and pages of the heap are free to go back.
        forget_attribute_names()
        gc.collect()
        trim_heap()
        return True
