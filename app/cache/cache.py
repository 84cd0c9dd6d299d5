"""The response cache: look a request up, wait for an identical one in flight, store answers.

Storage faults never fail a request: a store that is down, slow (bounded by its timeouts) or
returns a corrupt entry is a miss, logged and counted, and for a second after a fault the storage
is left alone so a dead Redis costs each request nothing. Identical requests that miss together
make one upstream call: within a process the first leads and the others wait on an event; across
processes sharing Redis the leader also holds a lock with a deadline there, and the others poll
for its entry. A waiter whose leader fails or passes the deadline makes its own call.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from .. import metrics
from ..cooldown import LogThrottle
from ..redact import scrub
from .entries import CorruptEntry, Entry, decode, encode
from .keys import CacheKey
from .stores import MemoryStore, RedisStore, StorageFailure, make_store

logger = logging.getLogger(__name__)

# How long storage is left alone after a fault (requests are served uncached meanwhile).
PAUSE_AFTER_FAULT_SECONDS = 1.0
# Longest an identical request waits for the first one's answer, and the lock's deadline.
MAX_FLIGHT_SECONDS = 120.0
POLL_FIRST_SECONDS = 0.01
# Entries decoded from the memory store's own bytes objects, kept so that a hit on the same
# object is not checked again (its checksum and metadata cannot have changed: bytes are
# immutable). Small answers only, and few, so that evicted answers are not kept alive in bulk.
DECODED_ENTRIES = 32
DECODED_MAX_BYTES = 16 * 1024
POLL_MAX_SECONDS = 0.1


class Result(StrEnum):
    """How the cache took part in a request (`x-ai-proxy-cache`, the log, the metric)."""

    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"


class Fault(StrEnum):
    """What went wrong with the cache storage (the `op` label of its error metric)."""

    READ = "read"
    WRITE = "write"
    LOCK = "lock"
    CORRUPT = "corrupt"
    DELETE = "delete"


@dataclass
class Ticket:
    """One request's part in the cache after a miss: where its answer goes, and whether it leads
    the identical requests waiting for it. `release()` ends its lead (safe to call twice)."""

    cache: ResponseCache
    key: CacheKey
    slot: str | None  # None: storage failed, nothing is written
    leading: bool = False  # other requests in this process wait for this one
    lock_owner: str | None = None  # it holds the storage lock under this name
    released: bool = field(default=False, repr=False)

    def save(self, entry: Entry) -> None:
        """Store a complete answer, then let the waiting requests read it."""
        if self.slot is not None:
            self.cache.write(self, entry)
        self.release()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.cache.land(self)


class ResponseCache:
    """The cache of one app: its storage, TTL, scope and the flights in progress."""

    def __init__(
        self,
        store: MemoryStore | RedisStore,
        ttl_seconds: float,
        shared_scope: bool,
        flight_seconds: float = MAX_FLIGHT_SECONDS,
    ) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self.shared_scope = shared_scope
        self.flight_seconds = min(flight_seconds, MAX_FLIGHT_SECONDS)
        self.errors = 0
        self._paused_until = 0.0
        self._throttle = LogThrottle()
        self._flights: dict[str, threading.Event] = {}
        self._flights_lock = threading.Lock()
        self._decoded: dict[str, tuple[bytes, Entry]] = {}  # slot: (its bytes, their entry)
        self._decoded_lock = threading.Lock()

    @classmethod
    def from_config(cls, config, flight_seconds: float = MAX_FLIGHT_SECONDS) -> ResponseCache:
        store = make_store(config.storage, config.max_memory_bytes)
        return cls(store, config.ttl_seconds, config.scope == "shared", flight_seconds)

    # -- looking up ---------------------------------------------------------------------------

    def look_up(self, key: CacheKey, read: bool = True) -> tuple[Entry | None, Ticket]:
        """A stored entry for `key` (a hit), else the ticket of a request that calls upstream.

        `read` False (`Cache-Control: no-cache`): no lookup and no waiting, but the fresh
        answer is stored.
        """
        found = self._read(key, fetch=read)
        if found is None:
            return None, Ticket(self, key, None)
        slot, data = found
        if data is not None:
            return data, Ticket(self, key, slot, released=True)
        ticket = Ticket(self, key, slot)
        if not read:
            return None, ticket
        return self._fly(ticket)

    def unusable(self, key: CacheKey, err: Exception) -> Ticket:
        """A hit whose answer its surface cannot serve (a shape it cannot replay): counted and
        logged as a corrupt entry, dropped, and the request goes on as a miss that stores."""
        _, ticket = self.look_up(key, read=False)
        if ticket.slot is not None:
            with self._decoded_lock:
                self._decoded.pop(ticket.slot, None)
            self._drop_corrupt(ticket.slot, err)
        else:
            self._fault(Fault.CORRUPT, err)
        return ticket

    def _drop_corrupt(self, slot: str, err: Exception) -> None:
        """A corrupt entry: counted and logged, and gone from the storage."""
        self._fault(Fault.CORRUPT, err)
        try:
            self.store.discard(slot)
        except StorageFailure:
            pass

    def _read(self, key: CacheKey, fetch: bool) -> tuple[str, Entry | None] | None:
        if self._paused():
            return None
        try:
            found = self.store.read(key, fetch)
        except StorageFailure as err:
            self._fault(Fault.READ, err)
            return None
        return found.slot, self._entry(key, found.slot, found.data)

    def _entry(self, key: CacheKey, slot: str, data: bytes | None) -> Entry | None:
        if data is None:
            return None
        known = self._decoded.get(slot)
        if known is not None and known[0] is data:
            return known[1]
        try:
            entry = decode(key.digest, data)
        except CorruptEntry as err:
            self._drop_corrupt(slot, err)
            return None
        if self.store.scheme == "memory" and len(data) <= DECODED_MAX_BYTES:
            with self._decoded_lock:
                if len(self._decoded) >= DECODED_ENTRIES:
                    del self._decoded[next(iter(self._decoded))]
                self._decoded[slot] = (data, entry)
        return entry

    def _fly(self, ticket: Ticket) -> tuple[Entry | None, Ticket]:
        """Lead the identical requests, or wait for the one leading them."""
        deadline = time.monotonic() + self.flight_seconds
        with self._flights_lock:
            event = self._flights.get(ticket.slot)
            if event is None:
                self._flights[ticket.slot] = threading.Event()
                ticket.leading = True
        if not ticket.leading:
            event.wait(max(0.0, deadline - time.monotonic()))
            found = self._read(ticket.key, fetch=True)
            if found is not None and found[1] is not None:
                return found[1], Ticket(self, ticket.key, found[0], released=True)
            # The first request failed, stored nothing or ran late: this one asks for itself.
            return None, ticket
        if not self.store.shared:
            return None, ticket
        try:
            return self._lead_elsewhere(ticket, deadline)
        except BaseException:
            ticket.release()  # whatever went wrong, this process's waiters must not hang
            raise

    def _lead_elsewhere(self, ticket: Ticket, deadline: float) -> tuple[Entry | None, Ticket]:
        """Take the storage's lock for the key, or wait for the process that holds it."""
        owner = uuid.uuid4().hex
        try:
            if self.store.lock(ticket.slot, owner, self.flight_seconds):
                ticket.lock_owner = owner
                return None, ticket
        except StorageFailure as err:
            self._fault(Fault.LOCK, err)
            return None, ticket
        entry = self._wait_elsewhere(ticket, deadline)
        if entry is not None:
            ticket.release()  # this process's waiters read the same entry
            return entry, Ticket(self, ticket.key, ticket.slot, released=True)
        return None, ticket

    def _wait_elsewhere(self, ticket: Ticket, deadline: float) -> Entry | None:
        """Poll for the entry another process is making, until its lock goes or time is up."""
        pause = POLL_FIRST_SECONDS
        while time.monotonic() < deadline:
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, POLL_MAX_SECONDS)
            try:
                data, locked = self.store.peek(ticket.slot)
            except StorageFailure as err:
                self._fault(Fault.READ, err)
                return None
            if data is not None:
                return self._entry(ticket.key, ticket.slot, data)
            if not locked:
                return None
        return None

    # -- storing and ending a flight ----------------------------------------------------------

    def write(self, ticket: Ticket, entry: Entry) -> None:
        data = encode(ticket.key.digest, entry)
        try:
            if self.store.write(ticket.slot, ticket.key.model, data, self.ttl):
                metrics.CACHE_STORED_BYTES.inc(len(data))
        except StorageFailure as err:
            self._fault(Fault.WRITE, err)

    def land(self, ticket: Ticket) -> None:
        if ticket.lock_owner is not None:
            try:
                self.store.unlock(ticket.slot, ticket.lock_owner)
            except StorageFailure as err:
                self._fault(Fault.LOCK, err)
        if ticket.leading:
            with self._flights_lock:
                event = self._flights.pop(ticket.slot, None)
            if event is not None:
                event.set()

    def delete(self, model: str | None = None) -> int:
        """Forget every entry, or those asked for under one public model name; raises
        StorageFailure (an operator asked, so a failure is theirs to see)."""
        try:
            return self.store.delete(model)
        except StorageFailure as err:
            self._fault(Fault.DELETE, err)
            raise

    # -- faults -------------------------------------------------------------------------------

    def _paused(self) -> bool:
        return self._paused_until > time.monotonic()

    def _fault(self, fault: Fault, err: Exception) -> None:
        self.errors += 1
        metrics.CACHE_ERRORS.labels(fault).inc()
        if fault is not Fault.CORRUPT:
            self._paused_until = time.monotonic() + PAUSE_AFTER_FAULT_SECONDS
        if self._throttle.ready():
            logger.warning(
                "cache storage %s failed (%s); serving uncached", fault.value, scrub(str(err))
            )
