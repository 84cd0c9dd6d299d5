"""Where cached answers live: one process's memory (LRU, bounded in bytes) or Redis (with TTL).

Both take the same calls. `read` finds a key's slot (where its entry is, or would be) and the
entry's bytes there; `write` stores bytes in a slot; `delete` forgets every entry, or one public
model's. Redis has no `KEYS` scan here: each slot name holds a global and a per-model generation,
and deleting raises the generation, so older slots are never read again and expire with their TTL.
Redis also holds the single-flight locks that let processes and hosts share one upstream call.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .. import metrics
from .keys import CacheKey

# What one memory entry costs besides its answer's bytes, measured on CPython 3.11: the slot name
# (a 64-character str, 113 bytes), the bytes object's header (33), the node (72), the ordered
# dict's share (about 100), and room for the allocator's rounding.
ENTRY_OVERHEAD_BYTES = 400
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


@dataclass(slots=True)
class _Node:
    data: bytes
    model: str
    expires: float  # time.monotonic()
    size: int


class DeleteLog:
    """Deletes one worker was asked for, told to the others of its server: a file in a folder
    the server's workers share, each delete one line appended. A worker reads what is new in it
    before it uses its cache (one `stat` when nothing is)."""

    NAME = "ai-proxy-cache-deletes"

    def __init__(self, folder: str) -> None:
        self.path = os.path.join(folder, self.NAME)
        self.seen = self._size()  # what came before this worker had nothing of its to delete

    def _size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def tell(self, model: str | None) -> None:
        line = (json.dumps({"model": model}) + "\n").encode("utf-8")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                size = os.fstat(fd).st_size
            finally:
                os.close(fd)
        except OSError:
            return
        if size == self.seen + len(line):
            self.seen = size  # nobody else wrote meanwhile: this line is applied already

    def news(self) -> list[str | None]:
        """The deletes the other workers were asked for since the last call."""
        size = self._size()
        if size <= self.seen:
            return []
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.seen)
                text = handle.read(size - self.seen)
        except OSError:
            return []
        lines = text.split(b"\n")
        self.seen += len(text) - len(lines[-1])  # a line being written is read next time
        models = []
        for line in lines[:-1]:
            try:
                models.append(json.loads(line)["model"])
            except (ValueError, KeyError, TypeError):
                models.append(None)  # unreadable: forgetting everything is the safe side
        return models


class MemoryStore:
    """This process's cache: least recently used entries go first past `max_bytes`.

    With `shared_folder` (the folder a server's workers share), a delete asked of one worker
    empties the others' caches too.
    """

    shared = False
    scheme = "memory"

    def __init__(
        self, max_bytes: int, clock=time.monotonic, shared_folder: str | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.size = 0  # bytes held, by the same count as max_bytes
        self._nodes: OrderedDict[str, _Node] = OrderedDict()
        self._lock = threading.Lock()
        self._deletes = DeleteLog(shared_folder) if shared_folder else None
        # Deletes so far, in all and per model: a slot names the ones it was read after, and
        # an answer written to a slot older than a delete is not kept (it was in flight when
        # its model's entries were emptied), as the Redis store's generations do.
        self._generation = 0
        self._model_generations: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def _catch_up(self) -> None:
        if self._deletes is not None:
            for model in self._deletes.news():
                self._forget(model)

    def _generations(self, model: str) -> str:
        return f"{self._generation}:{self._model_generations.get(model, 0)}"

    def _slot(self, key: CacheKey) -> str:
        return f"{key.digest}:{self._generations(key.model)}"

    def read(self, key: CacheKey, fetch: bool = True) -> Found:
        if not fetch:
            return Found(self._slot(key))
        self._catch_up()
        with self._lock:
            slot = self._slot(key)
            node = self._nodes.get(key.digest)
            if node is None:
                return Found(slot)
            if node.expires <= self.clock():
                self._drop(key.digest)
                return Found(slot)
            self._nodes.move_to_end(key.digest)
            return Found(slot, node.data)

    def write(self, slot: str, model: str, data: bytes, ttl: float) -> bool:
        """Store `data`; False if it is not kept (larger than the whole cache, or read before
        a delete of its model)."""
        digest, _, generations = slot.partition(":")
        size = len(data) + len(digest) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return False
        evicted = 0
        with self._lock:
            if generations and generations != self._generations(model):
                return False  # read before a delete of its model: not kept
            if digest in self._nodes:
                self._drop(digest)
            self._nodes[digest] = _Node(data, model, self.clock() + ttl, size)
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
        count = self._forget(model)
        if self._deletes is not None:
            self._deletes.tell(model)
        return count

    def _forget(self, model: str | None) -> int:
        with self._lock:
            if model is None:
                self._generation += 1
                count = len(self._nodes)
                self._nodes.clear()
                self.size = 0
            else:
                self._model_generations[model] = self._model_generations.get(model, 0) + 1
                gone = [slot for slot, node in self._nodes.items() if node.model == model]
                for slot in gone:
                    self._drop(slot)
                count = len(gone)
            held = self.size
        metrics.CACHE_MEMORY_BYTES.set(held)
        return count

    def discard(self, slot: str) -> None:
        digest = slot.partition(":")[0]
        with self._lock:
            if digest in self._nodes:
                self._drop(digest)

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
            node = self._nodes.get(slot.partition(":")[0])
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
        # Under gunicorn (conf/gunicorn.conf.py) every server's workers share this folder.
        return MemoryStore(max_bytes, shared_folder=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    return RedisStore(uri)
