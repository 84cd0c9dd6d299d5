"""A hit on the memory store's same stored bytes is answered with the entry decoded the first
time (app.cache.cache DECODED_*): the same answer as decoding again, never for other bytes,
never for a corrupt or large entry, and only a few kept."""

from __future__ import annotations

import pytest

from app.cache import ResponseCache
from app.cache.cache import DECODED_ENTRIES, DECODED_MAX_BYTES
from app.cache.entries import MAGIC, Entry, decode, encode
from app.cache.keys import make_key
from app.cache.stores import MemoryStore


def cache() -> ResponseCache:
    return ResponseCache(MemoryStore(10_000_000), ttl_seconds=60, shared_scope=False)


def stored(cache: ResponseCache, i: int, body: bytes = b'{"a": 1}'):
    key = make_key("openai", "m", "s", {"i": i})
    entry = Entry(body, "dep", "openai", 1_700_000_000.0, {"x-h": "v"})
    cache.store.write(key.digest, "m", encode(key.digest, entry), ttl=60)
    return key, entry


def hit(cache: ResponseCache, key) -> Entry | None:
    entry, ticket = cache.look_up(key)
    ticket.release()
    return entry


def test_a_second_hit_on_the_same_bytes_is_the_first_entry():
    c = cache()
    key, entry = stored(c, 1)
    first = hit(c, key)
    assert first == entry
    assert hit(c, key) is first
    assert first == decode(key.digest, c.store.read(key).data)


def test_new_bytes_in_the_slot_are_decoded_anew():
    c = cache()
    key, _ = stored(c, 1)
    first = hit(c, key)
    replaced = Entry(b'{"b": 2}', "other", "openai", 1_700_000_001.0)
    c.store.write(key.digest, "m", encode(key.digest, replaced), ttl=60)
    assert hit(c, key) == replaced and hit(c, key) is not first


@pytest.mark.parametrize(
    "data",
    [b"garbage", MAGIC + b'{"key": "x"}\n{}', MAGIC + b"{not json\n{}"],
    ids=["no magic", "wrong key", "bad metadata"],
)
def test_a_corrupt_entry_is_a_miss_every_time(data):
    c = cache()
    key = make_key("openai", "m", "s", {"i": 1})
    for _ in range(2):
        c.store.write(key.digest, "m", data, ttl=60)
        assert hit(c, key) is None
    assert not c._decoded


def test_large_entries_are_not_kept():
    c = cache()
    key, entry = stored(c, 1, b'"' + b"x" * DECODED_MAX_BYTES + b'"')
    assert hit(c, key) == entry
    assert not c._decoded


def test_only_a_few_are_kept():
    c = cache()
    keys = [stored(c, i)[0] for i in range(DECODED_ENTRIES * 3)]
    for key in keys:
        assert hit(c, key) is not None
    assert len(c._decoded) == DECODED_ENTRIES
    assert {slot.partition(":")[0] for slot in c._decoded} == {
        key.digest for key in keys[-DECODED_ENTRIES:]
    }


def test_a_deleted_entry_is_not_served_from_what_was_kept():
    c = cache()
    key, _ = stored(c, 1)
    assert hit(c, key) is not None
    c.store.delete()
    assert hit(c, key) is None
