"""Stored Responses: each response with its conversation, for `previous_response_id` and for
`GET`/`DELETE /v1/responses/<id>`, in memory (bounded, oldest first) or in Redis (shared by every
worker and host that uses it), for `responses.ttl_seconds`.

A stored response belongs to the client token that made it: any other token is told it does not
exist. The store fails open for writes (an answer is never lost because it could not be kept)
and closed for reads (a conversation that cannot be read is a 503, not a silent new one).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .errors import NotFoundError, ProxyError
from .redact import scrub

logger = logging.getLogger(__name__)

KEY_PREFIX = "ai-proxy:responses:"
REDIS_TIMEOUT_SECONDS = 2.0
MAX_ID_CHARS = 256


class ResponseStorageError(ProxyError):
    status = 503
    type = "service_unavailable"
    code = "response_storage_unavailable"
    anthropic_type = "api_error"
    default_message = "The stored responses cannot be read right now."


@dataclass(frozen=True)
class Stored:
    """A stored response: whose it is, the Response object, and the conversation it answered."""

    owner: str  # the SHA-256 digest of the client token that made it
    response: dict
    conversation: list[dict]  # the input items (stored history first), without instructions

    def history(self) -> list[dict]:
        """The conversation a response continuing this one starts from."""
        return [*self.conversation, *(self.response.get("output") or ())]

    def encode(self) -> bytes:
        data = {"owner": self.owner, "response": self.response, "input": self.conversation}
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> Stored:
        data = json.loads(raw)
        return cls(data["owner"], data["response"], data["input"])


def not_found(param: str | None = None) -> NotFoundError:
    # The id is not repeated: it looks like a secret to the scrubber, and it is the client's own.
    return NotFoundError("No stored response has that id.", param=param)


class ResponseStore:
    """Where responses are kept; subclasses say how. Ids are checked before any lookup."""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds

    def save(self, stored: Stored) -> None:
        """Keep a response; a storage failure is logged, never raised."""
        try:
            self._put(stored.response["id"], stored.encode())
        except ResponseStorageError:
            logger.warning("response not stored: the storage failed")
        except (ValueError, TypeError, RecursionError) as err:
            # An answer JSON cannot carry: the client still gets it, only not kept.
            logger.warning("response not stored: it cannot be encoded (%s)", type(err).__name__)

    def find(self, response_id: str, owner: str, param: str | None = None) -> Stored:
        """The stored response `response_id` of `owner`, or a 404 (unknown, expired, deleted,
        or another token's: they all read the same)."""
        raw = self._get(response_id) if 0 < len(response_id) <= MAX_ID_CHARS else None
        if raw is None:
            raise not_found(param)
        try:
            stored = Stored.decode(raw)
        except (ValueError, KeyError, TypeError):
            logger.warning("a stored response could not be read; treated as missing")
            raise not_found(param) from None
        if not hmac.compare_digest(stored.owner, owner):
            raise not_found(param)
        return stored

    def delete(self, response_id: str, owner: str) -> None:
        self.find(response_id, owner)
        self._delete(response_id)

    def _put(self, response_id: str, raw: bytes) -> None:
        raise NotImplementedError

    def _get(self, response_id: str) -> bytes | None:
        raise NotImplementedError

    def _delete(self, response_id: str) -> None:
        raise NotImplementedError


class MemoryResponseStore(ResponseStore):
    """One worker's responses, at most `max_bytes` of them: the oldest go first."""

    def __init__(self, ttl_seconds: float, max_bytes: int, clock=time.monotonic) -> None:
        super().__init__(ttl_seconds)
        self.max_bytes = max_bytes
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def _put(self, response_id: str, raw: bytes) -> None:
        if len(raw) > self.max_bytes:
            logger.warning("response not stored: larger than responses.max_memory_bytes")
            return
        with self._lock:
            self._drop(response_id)
            self._entries[response_id] = (self.clock() + self.ttl_seconds, raw)
            self._bytes += len(raw)
            while self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def _get(self, response_id: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(response_id)
            if entry is None:
                return None
            if entry[0] <= self.clock():
                self._drop(response_id)
                return None
            return entry[1]

    def _delete(self, response_id: str) -> None:
        with self._lock:
            self._drop(response_id)

    def _drop(self, response_id: str) -> None:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    def __len__(self) -> int:
        return len(self._entries)


class RedisResponseStore(ResponseStore):
    """Responses in Redis, each under its own key expiring with its TTL."""

    def __init__(self, ttl_seconds: float, client) -> None:
        super().__init__(ttl_seconds)
        self.client = client

    def _call(self, method: str, *args, **kwargs):
        import redis

        try:
            return getattr(self.client, method)(*args, **kwargs)
        except redis.RedisError as err:
            # Where the storage is and how it failed is for the log, not for the client.
            logger.warning("response storage %s failed: %s", method, scrub(str(err)))
            raise ResponseStorageError() from err

    def _put(self, response_id: str, raw: bytes) -> None:
        self._call("set", KEY_PREFIX + response_id, raw, px=max(1, int(self.ttl_seconds * 1000)))

    def _get(self, response_id: str) -> bytes | None:
        return self._call("get", KEY_PREFIX + response_id)

    def _delete(self, response_id: str) -> None:
        self._call("delete", KEY_PREFIX + response_id)


def storage_uri(config) -> str:
    """`responses.storage`, else the cache's storage when the cache is on, else the rate-limit
    storage."""
    cache = getattr(config, "cache", None)
    if config.responses.storage:
        return config.responses.storage
    if cache is not None and getattr(cache, "enabled", False) and getattr(cache, "storage", None):
        return cache.storage
    return config.rate_limits.storage


def make_response_store(uri: str, ttl_seconds: float, max_memory_bytes: int) -> ResponseStore:
    """The store a storage URI names: Redis for `redis*://`, memory for everything else
    (a memcached rate-limit storage cannot hold conversations; it keeps them in memory)."""
    if uri.startswith("redis"):
        from .ratelimit import make_storage, redis_client

        # The same client the quotas use for that URI (sentinel and cluster included).
        return RedisResponseStore(ttl_seconds, redis_client(make_storage(uri)))
    if not uri.startswith("memory"):
        logger.warning(
            "responses.storage %s cannot hold responses: keeping them in memory",
            uri.split("://", 1)[0],
        )
    return MemoryResponseStore(ttl_seconds, max_memory_bytes)
