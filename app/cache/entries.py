"""Stored answers: what an entry holds and its byte form, checked on every read.

An entry is `MAGIC`, one line of JSON metadata, then the answer's JSON exactly as a whole
answer sends it (so a hit for a whole answer is sent without decoding it). The metadata names
the key the entry was stored under and the SHA-256 of the answer: an entry that does not carry
both, byte for byte, is corrupt and never served.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field

MAGIC = b"AIPC1\n"
EARLIEST = 1_700_000_000.0  # 2023-11: no entry of this format is older
CLOCK_SKEW_SECONDS = 300.0  # hosts sharing a Redis cache may disagree on the time this much
UNSENDABLE = re.compile(r"[\x00-\x1f\x7f]")


class CorruptEntry(ValueError):
    """A stored entry that is not one this proxy wrote for this key, whole."""


@dataclass(frozen=True)
class Entry:
    """One stored answer and where it came from."""

    body: bytes  # the whole answer, JSON
    deployment: str  # the configured name of the deployment that produced it
    provider: str
    stored_at: float  # epoch seconds
    headers: dict[str, str] = field(default_factory=dict)  # answer headers kept with it

    def age(self, now: float | None = None) -> int:
        """Whole seconds since it was stored (the `Age` header)."""
        return max(0, int((time.time() if now is None else now) - self.stored_at))

    def answer(self) -> object:
        """The answer as a JSON value (for replaying it as a stream)."""
        return json.loads(self.body)


def encode(key: str, entry: Entry) -> bytes:
    meta = {
        "key": key,
        "sum": hashlib.sha256(entry.body).hexdigest(),
        "deployment": entry.deployment,
        "provider": entry.provider,
        "stored_at": entry.stored_at,
        "headers": entry.headers,
    }
    line = json.dumps(meta, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    return b"".join((MAGIC, line, b"\n", entry.body))


def decode(key: str, data: bytes) -> Entry:
    """The entry in `data`, stored under `key`; CorruptEntry if it is anything else."""
    if not isinstance(data, bytes | bytearray) or not data.startswith(MAGIC):
        raise CorruptEntry("not an entry")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise CorruptEntry("no metadata line")
    try:
        meta = json.loads(data[len(MAGIC) : end])
    except ValueError as err:
        raise CorruptEntry("unreadable metadata") from err
    body = bytes(data[end + 1 :])
    if not isinstance(meta, dict) or meta.get("key") != key:
        raise CorruptEntry("stored under another key")
    if meta.get("sum") != hashlib.sha256(body).hexdigest():
        raise CorruptEntry("the answer does not match its checksum")
    headers = meta.get("headers") or {}
    deployment, provider, stored_at = (
        meta.get("deployment"),
        meta.get("provider"),
        meta.get("stored_at"),
    )
    if (
        not isinstance(deployment, str)
        or not isinstance(provider, str)
        or not isinstance(stored_at, int | float)
        or not isinstance(headers, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
    ):
        raise CorruptEntry("malformed metadata")
    # Metadata is not under the checksum: what it says must be possible. A time that is not
    # one (NaN, infinite, before this format existed, in the future) would be an `Age` of
    # nonsense; a header with a control character, a header that cannot be sent.
    if not EARLIEST <= stored_at <= time.time() + CLOCK_SKEW_SECONDS:
        raise CorruptEntry("impossible stored_at")
    if any(UNSENDABLE.search(text) for item in headers.items() for text in item):
        raise CorruptEntry("unsendable header")
    if UNSENDABLE.search(deployment) or UNSENDABLE.search(provider):
        raise CorruptEntry("unsendable deployment name")
    return Entry(body, deployment, provider, float(stored_at), headers)
