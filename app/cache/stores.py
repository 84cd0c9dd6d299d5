"""Where cached answers live: one process's memory (LRU, bounded in bytes) or Redis (with TTL).

Both take the same calls. `read` finds a key's slot (where its entry is, or would be) and the
entry's bytes there; `write` stores bytes in a slot; `delete` forgets every entry, or one public
model's. Redis has no `KEYS` scan here: each slot name holds a global and a per-model generation,
and deleting raises the generation, so older slots are never read again and expire with their TTL.
Redis also holds the single-flight locks that let processes and hosts share one upstream call.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .. import metrics
from .keys import CacheKey

# What one memory entry costs besides its bytes: the slot name, the node, the dict's share.
ENTRY_OVERHEAD_BYTES = 256
# A dead or slow Redis must never stall a request: short socket timeouts, no client retries.
REDIS_TIMEOUT_SECONDS = 0.25
PREFIX = "ai-proxy:cache"


class StorageFailure(Exception):
    """The cache storage could not be reached or answered wrongly; the request goes on uncached."""


@dataclass(frozen=True)
class Found:
    """Where a key's entry is (or would be written), and its bytes if there is one."""

    slot: str
    data: bytes | None = None


@dataclass
class _Node:
    data: bytes
    model: str
    expires: float  # time.monotonic()
    size: int


class MemoryStore:
    """This process's cache: least recently used entries go first past `max_bytes`."""

    shared = False
    scheme = "memory"

    def __init__(self, max_bytes: int, clock=time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.size = 0  # bytes held, by the same count as max_bytes
        self._nodes: OrderedDict[str, _Node] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._nodes)

    def read(self, key: CacheKey, fetch: bool = True) -> Found:
        if not fetch:
            return Found(key.digest)
        with self._lock:
            node = self._nodes.get(key.digest)
            if node is None:
                return Found(key.digest)
            if node.expires <= self.clock():
                self._drop(key.digest)
                return Found(key.digest)
            self._nodes.move_to_end(key.digest)
            return Found(key.digest, node.data)

    def write(self, slot: str, model: str, data: bytes, ttl: float) -> bool:
        """Store `data`; False if it alone is larger than the whole cache."""
        size = len(data) + len(slot) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return False
        evicted = 0
        with self._lock:
            if slot in self._nodes:
                self._drop(slot)
            self._nodes[slot] = _Node(data, model, self.clock() + ttl, size)
            self.size += size
            while self.size > self.max_bytes:
                oldest = next(iter(self._nodes))
                self._drop(oldest)
                evicted += 1
            held = self.size
        if evicted:
            metrics.CACHE_EVICTIONS.inc(evicted)
        metrics.CACHE_MEMORY_BYTES.set(held)
        return True

    def delete(self, model: str | None = None) -> int:
        with self._lock:
            if model is None:
                count = len(self._nodes)
                self._nodes.clear()
                self.size = 0
            else:
                gone = [slot for slot, node in self._nodes.items() if node.model == model]
                for slot in gone:
                    self._drop(slot)
                count = len(gone)
            held = self.size
        metrics.CACHE_MEMORY_BYTES.set(held)
        return count

    def discard(self, slot: str) -> None:
        with self._lock:
            if slot in self._nodes:
                self._drop(slot)

    def _drop(self, slot: str) -> None:
        node = self._nodes.pop(slot)
        self.size -= node.size

    # Single flight within a process needs no lock in storage.
    def lock(self, slot: str, owner: str, seconds: float) -> bool:
        return True

    def unlock(self, slot: str, owner: str) -> None:
        return None

    def peek(self, slot: str) -> tuple[bytes | None, bool]:
        with self._lock:
            node = self._nodes.get(slot)
        return (node.data if node else None), False


# One round trip: the generations, then the slot they name, then (if asked) its entry.
_READ = """
local g = redis.call('GET', KEYS[1]) or '0'
local m = redis.call('GET', KEYS[2]) or '0'
local slot = ARGV[1] .. ':' .. g .. ':' .. m
if ARGV[2] == '1' then
  return {slot, redis.call('GET', slot)}
end
return {slot, false}
"""
# A lock is released only by its owner (a late owner must not free someone else's).
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisStore:
    """Entries in Redis, shared by every worker and host using it; they expire with their TTL."""

    shared = True
    scheme = "redis"

    def __init__(self, uri: str) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(
            uri,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )
        self._read = self.client.register_script(_READ)
        self._unlock = self.client.register_script(_UNLOCK)

    @staticmethod
    def generation_key(model: str | None) -> str:
        if model is None:
            return f"{PREFIX}:gen"
        # Hashed: a model name is client text of any length and alphabet.
        return f"{PREFIX}:gen:{hashlib.sha256(model.encode('utf-8', 'replace')).hexdigest()[:32]}"

    def _call(self, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except self._errors as err:
            raise StorageFailure(type(err).__name__) from err

    def read(self, key: CacheKey, fetch: bool = True) -> Found:
        keys = [self.generation_key(None), self.generation_key(key.model)]
        reply = self._call(
            self._read, keys=keys, args=[f"{PREFIX}:{key.digest}", "1" if fetch else "0"]
        )
        if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[0], bytes):
            raise StorageFailure("unexpected reply")
        data = reply[1]
        return Found(reply[0].decode("ascii"), data if isinstance(data, bytes) else None)

    def write(self, slot: str, model: str, data: bytes, ttl: float) -> bool:
        self._call(self.client.set, slot, data, px=max(1, int(ttl * 1000)))
        return True

    def delete(self, model: str | None = None) -> int:
        self._call(self.client.incr, self.generation_key(model))
        return -1  # unknown: the older entries are left to expire

    def discard(self, slot: str) -> None:
        self._call(self.client.delete, slot)

    def lock(self, slot: str, owner: str, seconds: float) -> bool:
        return bool(
            self._call(self.client.set, slot + ":lock", owner, nx=True, px=int(seconds * 1000))
        )

    def unlock(self, slot: str, owner: str) -> None:
        self._call(self._unlock, keys=[slot + ":lock"], args=[owner])

    def peek(self, slot: str) -> tuple[bytes | None, bool]:
        """The slot's entry, and whether its lock is still held."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.get(slot)
            pipe.exists(slot + ":lock")
            data, locked = self._call(pipe.execute)
        return (data if isinstance(data, bytes) else None), bool(locked)


def make_store(uri: str, max_bytes: int) -> MemoryStore | RedisStore:
    if uri.startswith("memory"):
        return MemoryStore(max_bytes)
    return RedisStore(uri)
