"""memory:// quotas counted once for all the workers of one gunicorn server.

limits' memory storage lives in one process, and under gunicorn every worker is a process of its
own: each counted only its own requests, so every limit was WEB_CONCURRENCY times too loose.
SharedMemoryStorage keeps the same counters (a key, a value, an expiry) in a file that every
worker of the server maps (in the server's metrics folder): an open-addressing hash table under
one lock across the processes (`flock`, which the kernel lets go of if a worker dies holding it).
SharedBatch runs the memory batch over it, so memory and Redis still answer alike.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import math
import mmap
import os
import struct
import threading
import time
import weakref

from limits.errors import StorageError
from limits.storage import Storage

from .limits_batch import CLOCK_HOLD_SECONDS
from .limits_memory import MemoryBatch

logger = logging.getLogger(__name__)

MAGIC = b"aiproxq1"
# 512 KiB of file at least: room for 12,288 counters (a moving window at its fullest has 62; the
# sizing from a config counts 64 a window, twice over, for reloads that add windows). Small on
# purpose: a moving window's counters land all over the table, so a worker soon has every page
# of it resident (4 MiB of them at 1 << 17 slots showed in the benchmark's worker memory).
DEFAULT_SLOTS = 1 << 14
COUNTERS_PER_WINDOW = 64
MAX_LOAD = 0.75  # fuller than this, a new counter first sweeps the whole table, then fails
# After a whole sweep found no room, new counters fail at once for this long (a sweep of a full
# table takes tens of milliseconds under the lock every worker waits on).
FULL_RETRY_SECONDS = 1.0
# Slots looked at for passed counters each time a new counter is made: the sweep keeps pace with
# new counters whatever the traffic (about one a bucket a window), and costs nothing otherwise.
SWEEP_PER_NEW = 8

_HEADER_SIZE = 64
# magic, slots, clock, counters held, sweep cursor, the pid holding the lock (0: none), and
# until when the table is known full.
_HEADER = struct.Struct("<8sQdQQQd")
_CLOCK = struct.Struct("<d")
_COUNT = struct.Struct("<Q")
_CLOCK_AT, _HELD_AT, _CURSOR_AT, _HOLDER_AT, _FULL_AT = 16, 24, 32, 40, 48
# A slot: the key's hash in two halves (0, 0: empty), when the counter expires, its value. A
# counter's own update writes only the last two (_TAIL, at +16).
_SLOT = struct.Struct("<QQdq")
_TAIL = struct.Struct("<dq")
_EMPTY = bytes(_SLOT.size)
MAX_VALUE = 2**63 - 1  # a slot's value is a signed 64-bit integer


def table_slots(windows: int) -> int:
    """The slots a table is made with for a config of `windows` windows (a power of two)."""
    needed = math.ceil(2 * windows * COUNTERS_PER_WINDOW / MAX_LOAD)
    return max(DEFAULT_SLOTS, 1 << max(0, needed - 1).bit_length())


def shared_storage(path: str, windows: int) -> SharedMemoryStorage:
    """The shared storage for a config of `windows` windows."""
    return SharedMemoryStorage(path, table_slots(windows), windows * COUNTERS_PER_WINDOW)


def _allocate(fd: int, size: int) -> None:
    """Give the file `size` bytes of zeros with their blocks on disk (or in memory) now."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    # A file system (or C library) that cannot allocate: write the zeros.
    zeros = bytes(1 << 20)
    for offset in range(0, size, len(zeros)):
        os.pwrite(fd, zeros[: size - offset], offset)


def _libc_flock():
    """libc's flock, called with the GIL held (ctypes.PyDLL), or None.

    `fcntl.flock` lets go of the GIL for the call, even one that cannot block: with the lock
    taken, the thread must then win the GIL back (up to the interpreter's 5 ms switch interval
    when other threads are busy) before it can do its work and let go, while every thread of
    every worker that wants a quota waits. Taking and letting go without blocking never needs
    to give the GIL up; only waiting for another worker's lock does (`fcntl.flock`).
    """
    try:
        # The running program's own symbols, libc's among them (no search for the library).
        flock = ctypes.PyDLL(None, use_errno=True).flock
    except (OSError, AttributeError, TypeError):
        return None
    flock.argtypes, flock.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return flock


_FLOCK = _libc_flock()


def _try_flock(fd: int, operation: int) -> bool:
    """flock(2) without giving up the GIL; False if it would block (or there is no libc to
    call), for fcntl.flock to do it."""
    return _FLOCK is not None and _FLOCK(fd, operation) == 0


# The file every worker of this server maps its counters from (set by the worker class).
_shared_file: str | None = None


class TableFull(Exception):
    """No room for another counter: every slot up to MAX_LOAD holds a live one."""


def share_between_workers(path: str | None) -> None:
    """Count memory:// quotas in the file `path`, which every worker of this server maps."""
    global _shared_file
    _shared_file = path


def shared_file() -> str | None:
    """The file memory:// quotas are counted in, when this process is a server's worker."""
    return _shared_file


class SharedCounters:
    """Counters in a file mapped by several processes; use as `with counters: ...`, which holds
    this process's thread lock and the file's lock across processes.

    Linear probing over a power-of-two table; a counter whose time has passed is deleted by
    shifting the rest of its run back (no tombstones), when a read meets it or the sweep that
    every new counter carries a little further does.
    """

    def __init__(self, path: str, slots: int = DEFAULT_SLOTS, needed: int = 0) -> None:
        """A table of `slots` slots in the file `path` (unless the file already holds one),
        which should have room for `needed` counters."""
        if slots < 8 or slots & (slots - 1):
            raise ValueError("slots must be a power of two, at least 8")
        self.path = path
        self.slots = slots
        self.needed = needed
        self._mask = slots - 1
        self._lock = threading.Lock()
        self._pid = 0
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._hashes: dict[str, tuple[int, int]] = {}
        _LIVE.add(self)

    # -- the lock and the file ----------------------------------------------------------------

    def __enter__(self) -> SharedCounters:
        self._lock.acquire()
        try:
            if self._pid != os.getpid():
                self._open()
            if not _try_flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # another worker holds it: wait
        except OSError as err:
            self._lock.release()
            raise StorageError(err) from err
        except BaseException:
            self._lock.release()
            raise
        try:
            if _COUNT.unpack_from(self._map, _HOLDER_AT)[0]:
                # The last holder died holding the lock (the kernel let go of it for them): it
                # may have been part way through moving a run or writing a slot.
                self._rebuild()
            _COUNT.pack_into(self._map, _HOLDER_AT, self._pid)
        except BaseException:
            # Both locks go; the mark stays, so that the next holder rebuilds.
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            _COUNT.pack_into(self._map, _HOLDER_AT, 0)
            if not _try_flock(self._fd, fcntl.LOCK_UN):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()

    def _open(self) -> None:
        """Map the file; whichever process comes first makes it, its blocks allocated (a disk
        that is full is then an error here, not a SIGBUS on a write to a page later) and its
        header written last (a file whose making was cut short is made again)."""
        self._close()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                head = os.pread(fd, _HEADER.size, 0)
                if len(head) < _HEADER.size or head[:8] == bytes(8):
                    size = _HEADER_SIZE + self.slots * _SLOT.size
                    os.ftruncate(fd, 0)  # whatever a cut-short making left
                    _allocate(fd, size)
                    os.pwrite(fd, _HEADER.pack(MAGIC, self.slots, 0.0, 0, 0, 0, 0.0), 0)
                    head = os.pread(fd, _HEADER.size, 0)
                magic, slots, *_ = _HEADER.unpack(head)
                size = _HEADER_SIZE + slots * _SLOT.size
                if magic != MAGIC or slots < 8 or slots & (slots - 1):
                    raise OSError(f"{self.path} is not a quota table")
                if os.fstat(fd).st_size != size:
                    raise OSError(f"{self.path} is not a quota table of {slots} slots")
                mapped = mmap.mmap(fd, size)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except BaseException:
            os.close(fd)
            raise
        if self.needed > slots * MAX_LOAD:
            logger.warning(
                "the workers' shared quota table holds %d counters, and this config may need up "
                "to %d: restart the server (a reload keeps the table) to make room",
                int(slots * MAX_LOAD),
                self.needed,
            )
        # The table's own size counts (made by a config before a reload, say).
        self.slots, self._mask = slots, slots - 1
        self._fd, self._map, self._pid = fd, mapped, os.getpid()

    def _close(self) -> None:
        if self._map is not None:
            self._map.close()
            os.close(self._fd)
        self._map, self._fd = None, -1

    def _after_fork(self) -> None:
        """In a forked child: a lock another thread held at the fork would never be let go,
        and the parent's open file is shared with it (flock would not keep them apart)."""
        self._lock = threading.Lock()
        self._pid = 0

    # -- under the lock -----------------------------------------------------------------------

    def tick(self, hold: float = CLOCK_HOLD_SECONDS, room: int = 0) -> float:
        """The time, not earlier than any process has seen by up to `hold` seconds (see
        MemoryBatch._clock); first, StorageError unless there is room for `room` new counters
        (a batch that could not finish would leave part of its counts)."""
        now = time.time()
        (last,) = _CLOCK.unpack_from(self._map, _CLOCK_AT)
        if now < last <= now + hold:
            now = last
        else:
            _CLOCK.pack_into(self._map, _CLOCK_AT, now)
        if room:
            self._make_room(room, now)
        return now

    def _make_room(self, count: int, now: float) -> None:
        """Room for `count` new counters, or StorageError(TableFull)."""
        limit = MAX_LOAD * self.slots
        if self._held() + count <= limit:
            return
        (full_until,) = _CLOCK.unpack_from(self._map, _FULL_AT)
        if now >= full_until:
            self._sweep(self.slots, now)
            if self._held() + count <= limit:
                return
            _CLOCK.pack_into(self._map, _FULL_AT, now + FULL_RETRY_SECONDS)
        raise StorageError(TableFull(f"{self.slots} counter slots are in use"))

    def get(self, key: str, now: float) -> int:
        """The counter's value (0 if there is none or its time has passed)."""
        index, slot = self._find(*self._hash(key))
        if slot is None:
            return 0
        if slot[2] <= now:
            self._delete(index)
            return 0
        return slot[3]

    def expiry(self, key: str) -> float | None:
        """When the counter expires, if there is one."""
        slot = self._find(*self._hash(key))[1]
        return None if slot is None else slot[2]

    def add(self, key: str, amount: int, expiry: float, now: float) -> int:
        """limits' MemoryStorage.incr: add to the counter; one that was 0 (or new, or passed)
        lives `expiry` seconds from now."""
        high, low = self._hash(key)
        index, slot = self._find(high, low)
        value = 0 if slot is None or slot[2] <= now else slot[3]
        # As MemoryStorage.incr: a counter that was 0 starts its time anew. One that high is
        # spent for good anyway.
        expires = now + expiry if value == 0 else slot[2]
        value = min(value + amount, MAX_VALUE)
        if slot is not None:
            _TAIL.pack_into(self._map, _HEADER_SIZE + index * _SLOT.size + 16, expires, value)
            return value
        self._make_room(1, now)
        self._sweep(SWEEP_PER_NEW, now)
        index = self._find(high, low)[0]  # the sweep may have shifted runs back
        offset = _HEADER_SIZE + index * _SLOT.size
        self._map[offset : offset + _SLOT.size] = _SLOT.pack(high, low, expires, value)
        _COUNT.pack_into(self._map, _HELD_AT, self._held() + 1)
        return value

    def take(self, key: str, amount: int, now: float) -> int:
        """limits' MemoryStorage.decr: take from a live counter, never below 0."""
        index, slot = self._find(*self._hash(key))
        if slot is None:
            return 0
        _, _, expires, value = slot
        if expires <= now:
            self._delete(index)
            return 0
        value = max(value - amount, 0)
        _TAIL.pack_into(self._map, _HEADER_SIZE + index * _SLOT.size + 16, expires, value)
        return value

    def clear(self, key: str) -> None:
        index, slot = self._find(*self._hash(key))
        if slot is not None:
            self._delete(index)

    def reset(self) -> int:
        """Drop every counter; how many there were."""
        held = self._held()
        self._map[_HEADER_SIZE:] = bytes(self.slots * _SLOT.size)
        _COUNT.pack_into(self._map, _HELD_AT, 0)
        return held

    # -- the table ----------------------------------------------------------------------------

    def _hash(self, key: str) -> tuple[int, int]:
        found = self._hashes.get(key)
        if found is None:
            if len(self._hashes) > 50_000:  # keys of windows long gone
                self._hashes.clear()
            digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
            # The first half is never 0, which marks an empty slot (its top bit is set: the
            # low bits name the key's home slot).
            high = int.from_bytes(digest[:8], "little") | 1 << 63
            found = (high, int.from_bytes(digest[8:], "little"))
            self._hashes[key] = found
        return found

    def _held(self) -> int:
        return _COUNT.unpack_from(self._map, _HELD_AT)[0]

    def _find(self, high: int, low: int) -> tuple[int, tuple | None]:
        """The key's slot and what it holds, or the empty slot that ends its run and None."""
        unpack, mapped, mask, size = _SLOT.unpack_from, self._map, self._mask, _SLOT.size
        index = high & mask
        while True:
            slot = unpack(mapped, _HEADER_SIZE + index * size)
            if slot[0] == high and slot[1] == low:
                return index, slot
            if slot[0] == 0:
                return index, None
            index = (index + 1) & mask

    def _delete(self, index: int) -> None:
        """Empty a slot, moving back the counters after it in its run that may sit there
        (Knuth's algorithm R), so that every run stays unbroken."""
        mapped, mask, size = self._map, self._mask, _SLOT.size
        gap, probe = index, index
        while True:
            probe = (probe + 1) & mask
            start = _HEADER_SIZE + probe * size
            (high,) = _COUNT.unpack_from(mapped, start)
            if high == 0:
                break
            home = high & mask
            # A counter stays where it is if its home lies cyclically in (gap, probe].
            if (gap < home <= probe) if gap <= probe else (home > gap or home <= probe):
                continue
            to = _HEADER_SIZE + gap * size
            mapped[to : to + size] = mapped[start : start + size]
            gap = probe
        to = _HEADER_SIZE + gap * size
        mapped[to : to + size] = _EMPTY
        _COUNT.pack_into(mapped, _HELD_AT, max(0, self._held() - 1))

    def _rebuild(self) -> None:
        """Lay every counter out afresh and count them again (after a holder died part way
        through a change). A counter found twice keeps its higher value: never less than was
        counted."""
        mapped, size = self._map, _SLOT.size
        found: dict[tuple[int, int], tuple[float, int]] = {}
        for high, low, expires, value in _SLOT.iter_unpack(mapped[_HEADER_SIZE:]):
            if high:
                known = found.get((high, low))
                if known is None or (value, expires) > (known[1], known[0]):
                    found[(high, low)] = (expires, value)
        # Laid out aside, then copied over in one go: a holder killed meanwhile loses nothing.
        table, mask = bytearray(self.slots * size), self._mask
        for (high, low), (expires, value) in found.items():
            index = high & mask
            while table[index * size : index * size + 8] != bytes(8):
                index = (index + 1) & mask
            table[index * size : (index + 1) * size] = _SLOT.pack(high, low, expires, value)
        mapped[_HEADER_SIZE:] = table
        _COUNT.pack_into(mapped, _HELD_AT, len(found))
        logger.warning("the workers' shared quota table was rebuilt: a worker died changing it")

    def _sweep(self, count: int, now: float) -> None:
        """Look at `count` slots from the sweep's cursor on; delete counters whose time passed."""
        mapped, mask, size = self._map, self._mask, _SLOT.size
        (cursor,) = _COUNT.unpack_from(mapped, _CURSOR_AT)
        cursor &= mask
        for _ in range(count):
            high, _, expires, _ = _SLOT.unpack_from(mapped, _HEADER_SIZE + cursor * size)
            if high and expires <= now:
                self._delete(cursor)  # a counter shifted back into it is looked at next time
            else:
                cursor = (cursor + 1) & mask
        _COUNT.pack_into(mapped, _CURSOR_AT, cursor)


_LIVE: weakref.WeakSet[SharedCounters] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for counters in list(_LIVE):
        counters._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SharedMemoryStorage(Storage):
    """A `limits` storage whose counters every worker of the server shares (SharedCounters);
    what `memory://` is under the proxy's gunicorn workers."""

    STORAGE_SCHEME = None  # chosen for memory:// by app.ratelimit.make_storage, not by URI

    def __init__(
        self, path: str, slots: int = DEFAULT_SLOTS, needed: int = 0, wrap_exceptions: bool = True
    ):
        super().__init__(None, wrap_exceptions=wrap_exceptions)
        self.counters = SharedCounters(path, slots, needed)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return (OSError, TableFull)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        with self.counters as counters:
            return counters.add(key, amount, expiry, time.time())

    def get(self, key: str) -> int:
        with self.counters as counters:
            return counters.get(key, time.time())

    def get_expiry(self, key: str) -> float:
        now = time.time()
        with self.counters as counters:
            counters.get(key, now)  # drops it if its time has passed, as MemoryStorage does
            expires = counters.expiry(key)
        return now if expires is None else expires

    def check(self) -> bool:
        try:
            with self.counters:
                return True
        except StorageError:
            return False

    def reset(self) -> int | None:
        with self.counters as counters:
            return counters.reset()

    def clear(self, key: str) -> None:
        with self.counters as counters:
            counters.clear(key)


class SharedBatch(MemoryBatch):
    """The memory batch over SharedCounters: one lock for every worker of the server."""

    def __init__(self, storage: SharedMemoryStorage) -> None:
        self.counters = storage.counters
        super().__init__(storage, lock=storage.counters, direct=True)

    def _clock(self, room: int = 0) -> float:
        # A batch makes at most two new counters a window (its summary, its bucket): room for
        # them first, so that a full table refuses a batch whole, never part way through.
        return self.counters.tick(CLOCK_HOLD_SECONDS, room)

    def _get(self, key: str, now: float) -> int:
        return self.counters.get(key, now)

    def _incr(self, key: str, expiry: float, amount: int, now: float) -> None:
        self.counters.add(key, amount, expiry, now)

    def _decr(self, key: str, amount: int, now: float) -> None:
        self.counters.take(key, amount, now)

    def _expiry(self, key: str, default: float | None = None) -> float | None:
        expires = self.counters.expiry(key)
        return default if expires is None else expires
