"""The quota batch over limits' memory storage (one lock) and over storages with no batch at all.

The same algorithm as the Redis script in app.hooks.limits_batch, so that memory and Redis
answer alike; LimiterBatch is the window-by-window fallback for memcached and Redis clusters.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterable, Sequence

from limits.storage import MemcachedStorage, MemoryStorage, Storage

from .limits_batch import (
    BUCKETS,
    CLOCK_HOLD_SECONDS,
    Change,
    Layout,
    Reading,
    Reserved,
    Window,
)

# One lock per memory storage, also taken by its sweeper (see SweptMemoryStorage.sweep).
_LOCKS: weakref.WeakKeyDictionary[MemoryStorage, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def batch_lock(storage: MemoryStorage) -> threading.Lock:
    """The lock every batch over a memory storage holds."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(storage)
        if lock is None:
            lock = _LOCKS[storage] = threading.Lock()
        return lock


def window_keys(key: str, expiry: int, now: float) -> tuple[str, str]:
    """limits' `sliding_window_keys` (the previous and the current counter of a sliding window),
    without its class-method call."""
    return f"{key}/{int((now - expiry) / expiry)}", f"{key}/{int(now / expiry)}"


def bucket(expiry: float, now: float) -> int:
    """The moving-window bucket that counts what is taken at `now` (see Layout.MOVING)."""
    return int(now * BUCKETS // expiry)


def bucket_key(key: str, index: int) -> str:
    return f"{key}/m{index}"


def bucket_end(index: int, expiry: float) -> float:
    """When bucket `index` stops counting: the end of the last window it overlaps."""
    return (index + 1) * expiry / BUCKETS + expiry


def summary(older: int, first: int) -> int:
    """The summary counter of a moving window's older buckets (all but the current one): what
    they hold and the offset of the oldest that holds anything (BUCKETS: none), as one
    positive number (the Lua script writes the same)."""
    return 1 + first + (BUCKETS + 1) * older


def held(counts: Iterable[int]) -> tuple[int, int]:
    """What bucket counts (oldest first) hold together, and the offset of the oldest that holds
    anything (how many there are: none)."""
    total, first, size = 0, None, 0
    for size, count in enumerate(counts, 1):
        if count > 0:
            if first is None:
                first = size - 1
            total += count
    return total, size if first is None else first


def read_summary(code: int) -> tuple[int, int]:
    """`summary` read back: (what the older buckets hold, the oldest's offset)."""
    older, first = divmod(code - 1, BUCKETS + 1)
    return older, first


class MemoryBatch:
    """The batch over limits' MemoryStorage counters, under one lock: the same algorithm as the
    Lua script, so that memory and Redis answer alike."""

    def __init__(self, storage: MemoryStorage, lock=None, direct: bool = False) -> None:
        self.storage = storage
        # Any context manager; SharedBatch's also locks out the server's other workers.
        self.lock = batch_lock(storage) if lock is None else lock
        # limits wraps get/incr/decr of MemoryStorage and of every subclass again (its error
        # wrapper, twice for SweptMemoryStorage): for the storages whose counters are limits'
        # own, the batch does what those methods do on the counters itself (see _get, _incr).
        # A storage class of anyone else's keeps its own methods, unless the batch's subclass
        # has its own `_get`, `_incr`, `_decr` and `_expiry` (`direct`, as SharedBatch).
        kind = type(storage)
        self.direct = direct or kind is MemoryStorage or bool(vars(kind).get("plain_counters"))
        self.get = self._get if self.direct else lambda key, _now: storage.get(key)
        self._last_now = 0.0
        # Per moving window: its current bucket, the keys of the buckets that count then
        # (oldest first) and of their summary, named once per bucket rather than per request.
        self._spans: dict[str, tuple[int, list[str], str]] = {}

    def _clock(self, room: int = 0) -> float:
        """The time, not earlier than the batch has seen by up to CLOCK_HOLD_SECONDS (under the
        lock): a summary of a moving window's older buckets counts on buckets only moving
        forward; a clock stepped back would put requests in older buckets after they were
        summed. Further back is taken as it is (the Lua script does the same): holding it would
        freeze every moving window until real time caught up. `room`, the most new counters
        the batch makes, is for SharedBatch, whose table may be full."""
        now = time.time()
        if now < self._last_now <= now + CLOCK_HOLD_SECONDS:
            return self._last_now
        self._last_now = now
        return now

    def _span(self, window: Window, now: float) -> tuple[int, list[str], str]:
        """The current bucket's index, the keys of the BUCKETS + 1 that count now, and the
        key of the summary of all but the current one."""
        index = bucket(window.expiry, now)
        known = self._spans.get(window.key)
        if known is not None and known[0] == index:
            return known
        if len(self._spans) > 10_000:  # windows of tokens and models a reload took out
            self._spans.clear()
        key = window.key
        span = self._spans[key] = (
            index,
            [bucket_key(key, j) for j in range(index - BUCKETS, index + 1)],
            f"{key}/s{index}",
        )
        return span

    def _moving(self, window: Window, now: float) -> tuple[int, float, str]:
        """A moving window's (used, seconds until room frees, the current bucket's key).

        The older buckets change only when a settle reaches one of them (it then drops their
        summary): they are read once per bucket, and kept summed in a counter of the
        storage's that lives until the bucket changes."""
        get, expiry = self.get, window.expiry
        index, keys, summary_key = self._span(window, now)
        code = get(summary_key, now)
        if code > 0:
            older, first = read_summary(code)
        else:
            older, first = held(get(key, now) for key in keys[:BUCKETS])
            lives = (index + 1) * expiry / BUCKETS - now
            self._add_counter(summary_key, lives, summary(older, first), now)
        current = get(keys[-1], now)
        if older:  # room frees first when the oldest bucket with anything stops counting
            reset = bucket_end(index - BUCKETS + first, expiry) - now
        elif current:
            reset = bucket_end(index, expiry) - now
        else:
            reset = float(expiry)
        return older + current, max(0.0, reset), keys[-1]

    def _get(self, key: str, now: float) -> int:
        """MemoryStorage.get: the counter, dropped first if its window has passed (by `now`,
        the batch's time: one clock read per batch instead of one per counter)."""
        storage = self.storage
        if storage.expirations.get(key, 0) <= now:
            storage.storage.pop(key, None)
            storage.expirations.pop(key, None)
            storage.locks.pop(key, None)
        return storage.storage.get(key, 0)

    def _expiry(self, key: str, default: float | None = None) -> float | None:
        """When a counter expires (MemoryStorage.get_expiry, without its clock read)."""
        return self.storage.expirations.get(key, default)

    def _incr(self, key: str, expiry: float, amount: int, now: float) -> None:
        """MemoryStorage.incr (its own expiry hook included)."""
        storage = self.storage
        self._get(key, now)
        storage._MemoryStorage__schedule_expiry()
        counters = storage.storage
        with storage.locks[key]:
            counters[key] += amount
            if counters[key] == amount:
                storage.expirations[key] = now + expiry

    def _decr(self, key: str, amount: int, now: float) -> None:
        """MemoryStorage.decr (its own expiry hook included)."""
        storage = self.storage
        self._get(key, now)
        storage._MemoryStorage__schedule_expiry()
        counters = storage.storage
        with storage.locks[key]:
            counters[key] = max(counters[key] - amount, 0)

    def _usage(self, window: Window, now: float) -> tuple[int, float, str]:
        """(used, seconds until room frees, the key an amount goes to now)."""
        expiry, get = window.expiry, self.get
        if window.layout is Layout.FIXED:
            used = get(window.key, now)
            reset = self._expiry(window.key, now + expiry) - now if used else expiry
            return used, max(0.0, reset), window.key
        if window.layout is Layout.MOVING:
            return self._moving(window, now)
        previous_key, current_key = window_keys(window.key, expiry, now)
        previous, current = get(previous_key, now), get(current_key, now)
        # As limits computes it: the part of the previous window the moving window still covers.
        previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        reset = float(expiry)
        if previous:
            reset = min(reset, previous_ttl % (expiry / previous))
        if current:
            reset = min(reset, current_ttl % expiry)
        return math.floor(previous * previous_ttl / expiry + current), reset, current_key

    def _add(self, window: Window, key: str, amount: int, now: float) -> None:
        """Add to a counter; a new one lives as long as its window (for a moving window: as
        long as the current bucket counts, the only bucket a new counter is made for)."""
        layout = window.layout
        if layout is Layout.FIXED:
            expiry = window.expiry
        elif layout is Layout.MOVING:
            expiry = bucket_end(bucket(window.expiry, now), window.expiry) - now
        else:
            expiry = 2 * window.expiry
        self._add_counter(key, expiry, amount, now)

    def _add_counter(self, key: str, expiry: float, amount: int, now: float) -> None:
        """Add to (or take from) a counter; a new one lives `expiry` seconds."""
        if self.direct:
            if amount >= 0:
                self._incr(key, expiry, amount, now)
            else:
                self._decr(key, -amount, now)
        elif amount >= 0:
            self.storage.incr(key, expiry, amount)
        else:
            self.storage.decr(key, -amount)

    def reserve(
        self,
        required: Sequence[tuple[Window, int]],
        choices: Sequence[Sequence[tuple[Window, int]]],
        choice_breakers: Sequence[int] = (),
        breaker_keys: Sequence[str] = (),
        carried: Sequence[Change] = (),
    ) -> Reserved:
        if carried:
            self.adjust(carried)
        flat = [*required, *(pair for choice in choices for pair in choice)]
        with self.lock:
            now = self._clock(2 * len(flat))
            usages = [self._usage(window, now) for window, _ in flat]

            def refusing(first: int, last: int) -> int | None:
                for i in range(first, last):
                    if usages[i][0] + flat[i][1] > flat[i][0].limit:
                        return i
                return None

            refused = refusing(0, len(required))
            chosen, verdicts = None, []
            if refused is None:
                first = len(required)
                for c, choice in enumerate(choices):
                    verdict = refusing(first, first + len(choice))
                    verdicts.append(verdict)
                    if verdict is None:
                        chosen = c
                        break
                    first += len(choice)
            marks: list[object] = [None] * len(flat)
            full = (
                refused is None
                and bool(choices)
                and chosen is None
                and not all(v is not None and flat[v][0].client for v in verdicts)
            )
            if refused is None and (not choices or chosen is not None or full):
                taken = list(range(len(required)))
                if chosen is not None:
                    start = len(required) + sum(len(choice) for choice in choices[:chosen])
                    taken += range(start, start + len(choices[chosen]))
                for i in taken:
                    window, amount = flat[i]
                    key = usages[i][2]
                    self._add(window, key, amount, now)
                    # A fixed window's key outlives its window: its expiry names the window.
                    fixed = window.layout is Layout.FIXED
                    marks[i] = self._expiry(key) if fixed else key
        verdicts += [None] * (len(choices) - len(verdicts))
        readings = [Reading(used, reset) for used, reset, _ in usages]
        return Reserved(refused, chosen, verdicts, readings, marks, [], full)

    def adjust(self, changes: Sequence[Change]) -> None:
        with self.lock:
            # Only an amount added can make a counter (one at most); one taken back never does.
            now = self._clock(sum(1 for change in changes if change.delta > 0))
            for change in changes:
                window = change.window
                if window.layout is Layout.FIXED:
                    current = window.key
                    self.get(current, now)  # drops the counter if its window has passed
                    same = self._expiry(current) == change.mark
                    target = current if same and change.mark is not None else None
                elif window.layout is Layout.MOVING:
                    self._moving_adjust(change, now)
                    continue
                else:
                    previous, current = window_keys(window.key, window.expiry, now)
                    target = change.mark if change.mark in (previous, current) else None
                if target is None:
                    # The reserved window has passed: only more than was reserved still counts.
                    if change.delta > 0:
                        self._add(window, current, change.delta, now)
                    continue
                self._add(window, target, change.delta, now)

    def _moving_adjust(self, change: Change, now: float) -> None:
        """Settle on the bucket the reservation went to while it still counts (the older
        buckets' summary follows it), else only more than was reserved, on the current one."""
        window, delta = change.window, change.delta
        _, keys, summary_key = self._span(window, now)
        try:
            offset = keys.index(change.mark)
        except ValueError:
            if delta > 0:
                self._add(window, keys[-1], delta, now)
            return
        key = keys[offset]
        before = self.get(key, now)
        self._add(window, key, delta, now)
        if offset == BUCKETS:
            return  # the current bucket: not in the summary
        code = self.get(summary_key, now)
        if code <= 0:
            return  # none yet: the next reading sums the buckets
        after = self.get(key, now)
        older, first = read_summary(code)
        if after == 0 and before > 0 and offset == first:
            # The oldest bucket with anything emptied: the next reading finds the new oldest.
            self._add_counter(summary_key, 0, -code, now)
            return
        if before == 0 and after > 0:
            first = min(first, offset)
        self._add_counter(summary_key, 0, summary(older + after - before, first) - code, now)

    def read(self, windows: Sequence[Window]) -> list[Reading]:
        with self.lock:
            now = self._clock(len(windows))
            return [Reading(*self._usage(window, now)[:2]) for window in windows]


# Memcached reads a time to live over this many seconds (30 days) as an absolute unix time.
MEMCACHED_RELATIVE_SECONDS = 30 * 86400


class LimiterBatch:
    """Storages with no atomic batch (memcached, a Redis cluster, whose keys of one request
    live on different nodes): each window is checked and taken by limits' own atomic calls,
    one after another. No window ever admits past its limit, but a refusal by a later window
    does not give back what earlier ones took, and an unused reservation stays counted until
    its window passes. A moving window's bucket is added to first and the buckets read after:
    of requests racing for the last room, none may be admitted, never too many."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.sliding = hasattr(storage, "acquire_sliding_window_entry")
        self.memcached = isinstance(storage, MemcachedStorage)

    def _layout(self, window: Window) -> Layout:
        layout = window.layout
        if layout is Layout.SLIDING and (
            not self.sliding
            # limits' sliding counter on memcached lives two windows, which for a month is a
            # time to live memcached reads as a date in 1970: the counter would never count.
            or (self.memcached and 2 * window.expiry > MEMCACHED_RELATIVE_SECONDS)
        ):
            return Layout.FIXED
        return layout

    def _ttl(self, seconds: float, now: float) -> int:
        """A time to live for `incr`: memcached reads one over 30 days as a unix time."""
        if self.memcached and seconds > MEMCACHED_RELATIVE_SECONDS:
            return math.ceil(now + seconds)
        return math.ceil(seconds)

    def _read(self, window: Window) -> Reading:
        layout = self._layout(window)
        if layout is Layout.FIXED:
            used = self.storage.get(window.key)
            return Reading(used, max(0.0, self.storage.get_expiry(window.key) - time.time()))
        if layout is Layout.MOVING:
            now = time.time()
            index = bucket(window.expiry, now)
            keys = [bucket_key(window.key, j) for j in range(index - BUCKETS, index + 1)]
            used, first = held(self._counts(keys))
            if not used:
                return Reading(0, float(window.expiry))
            return Reading(used, max(0.0, bucket_end(index - BUCKETS + first, window.expiry) - now))
        previous, previous_ttl, current, current_ttl = self.storage.get_sliding_window(
            window.key, window.expiry
        )
        used = math.floor(previous * previous_ttl / window.expiry + current)
        return Reading(used, min(float(window.expiry), current_ttl % window.expiry))

    def _counts(self, keys: list[str]) -> list[int]:
        """The counters of `keys`: one `get_many` on memcached, else one `get` each."""
        storage = self.storage
        if self.memcached:
            found = storage.call_memcached_func(storage.storage.get_many, keys)
            return [int(found.get(key) or 0) for key in keys]
        return [storage.get(key) for key in keys]

    def _take(self, window: Window, amount: int, seen: dict[int, Reading]) -> bool:
        """Take `amount` from the window if it fits; a moving window's reading (what it held
        before this request) goes into `seen`, by the window's id."""
        layout = self._layout(window)
        if layout is Layout.FIXED:
            ttl = self._ttl(window.expiry, time.time())
            if self.storage.incr(window.key, ttl, amount) <= window.limit:
                return True
            self._give_back(window.key, window.expiry, amount)
            return False
        if layout is Layout.MOVING:
            if amount > window.limit:
                return False
            key = self._moving_add(window, amount)
            after = self._read(window)
            # What the window held before this request, read once (its 61 counters) for both.
            seen[id(window)] = Reading(max(0, after.used - amount), after.reset_in)
            if after.used <= window.limit:
                return True
            self._give_back(key, window.expiry, amount)
            return False
        return self.storage.acquire_sliding_window_entry(
            window.key, window.limit, window.expiry, amount
        )

    def _give_back(self, key: str, expiry: int, amount: int) -> None:
        """Take back what a refused request added. Only limits' memory storage has `decr`;
        memcached's client decrements (never below 0); Redis adds the negative amount."""
        if amount <= 0:
            return
        decr = getattr(self.storage, "decr", None)
        if decr is not None:
            decr(key, amount)
            return
        if isinstance(self.storage, MemcachedStorage):
            storage = self.storage
            storage.call_memcached_func(storage.storage.decr, key, amount, noreply=False)
            return
        self.storage.incr(key, expiry, -amount)

    def _moving_add(self, window: Window, amount: int) -> str:
        now = time.time()
        index = bucket(window.expiry, now)
        key = bucket_key(window.key, index)
        self.storage.incr(key, self._ttl(bucket_end(index, window.expiry) - now, now), amount)
        return key

    def reserve(
        self,
        required: Sequence[tuple[Window, int]],
        choices: Sequence[Sequence[tuple[Window, int]]],
        choice_breakers: Sequence[int] = (),
        breaker_keys: Sequence[str] = (),
        carried: Sequence[Change] = (),
    ) -> Reserved:
        if carried:
            self.adjust(carried)
        flat = [*required, *(pair for choice in choices for pair in choice)]
        # Moving windows are read by their take (see _take); the others, and windows not
        # taken, before.
        readings = [
            None if self._layout(window) is Layout.MOVING else self._read(window)
            for window, _ in flat
        ]
        seen: dict[int, Reading] = {}

        def answer(*args) -> Reserved:
            for i, (window, _) in enumerate(flat):
                if readings[i] is None:
                    known = seen.get(id(window))
                    readings[i] = known if known is not None else self._read(window)
            return Reserved(*args)

        marks: list[object] = [None] * len(flat)
        for i, (window, amount) in enumerate(required):
            if not self._take(window, amount, seen):
                return answer(i, None, [None] * len(choices), readings, marks)
            marks[i] = 0
        chosen, verdicts, first = None, [], len(required)
        for c, choice in enumerate(choices):
            verdict = None
            for i in range(first, first + len(choice)):
                window, amount = flat[i]
                if not self._take(window, amount, seen):
                    verdict = i
                    break
                marks[i] = 0
            verdicts.append(verdict)
            if verdict is None:
                chosen = c
                break
            first += len(choice)
        verdicts += [None] * (len(choices) - len(verdicts))
        full = chosen is None and not all(v is not None and flat[v][0].client for v in verdicts)
        return answer(None, chosen, verdicts, readings, marks, [], bool(choices) and full)

    def adjust(self, changes: Sequence[Change]) -> None:
        for change in changes:
            if change.delta > 0:
                # Over its limit or not, real usage counts: the next request is refused.
                layout = self._layout(change.window)
                if layout is Layout.FIXED:
                    ttl = self._ttl(change.window.expiry, time.time())
                    self.storage.incr(change.window.key, ttl, change.delta)
                elif layout is Layout.MOVING:
                    self._moving_add(change.window, change.delta)
                else:
                    window = change.window
                    self.storage.acquire_sliding_window_entry(
                        window.key, 2**62, window.expiry, change.delta
                    )

    def read(self, windows: Sequence[Window]) -> list[Reading]:
        return [self._read(window) for window in windows]
