"""The stored responses: owners, expiry, the memory bound (oldest first), Redis, and a storage
that fails (writes fail open, reads fail closed)."""

from __future__ import annotations

import pytest
import redis

from app.config import load_config
from app.errors import NotFoundError
from app.response_store import (
    MemoryResponseStore,
    RedisResponseStore,
    ResponseStorageError,
    Stored,
    make_response_store,
    storage_uri,
)

OWNER, OTHER = "a" * 64, "b" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stored(response_id: str, owner: str = OWNER, text: str = "x") -> Stored:
    response = {
        "id": response_id,
        "object": "response",
        "output": [{"type": "message", "text": text}],
    }
    return Stored(owner, response, [{"type": "message", "role": "user", "content": "hi"}])


def test_only_the_owner_finds_it_and_the_history_follows_the_conversation():
    store = MemoryResponseStore(60, 1 << 20)
    store.save(stored("resp_1"))
    found = store.find("resp_1", OWNER)
    assert found.history() == [*found.conversation, *found.response["output"]]
    for response_id, owner in [
        ("resp_1", OTHER),
        ("resp_2", OWNER),
        ("", OWNER),
        ("r" * 999, OWNER),
    ]:
        with pytest.raises(NotFoundError) as info:
            store.find(response_id, owner, param="previous_response_id")
        assert info.value.param == "previous_response_id" and info.value.status == 404
    with pytest.raises(NotFoundError):
        store.delete("resp_1", OTHER)
    store.delete("resp_1", OWNER)
    with pytest.raises(NotFoundError):
        store.find("resp_1", OWNER)


def test_memory_responses_expire():
    clock = Clock()
    store = MemoryResponseStore(60, 1 << 20, clock=clock)
    store.save(stored("resp_1"))
    clock.now += 59
    assert store.find("resp_1", OWNER)
    clock.now += 2
    with pytest.raises(NotFoundError):
        store.find("resp_1", OWNER)
    assert len(store) == 0


def test_memory_is_bounded_and_the_oldest_go_first():
    size = len(stored("resp_0").encode())
    store = MemoryResponseStore(60, size * 3)
    for index in range(5):
        store.save(stored(f"resp_{index}"))
    assert len(store) == 3
    for gone in ("resp_0", "resp_1"):
        with pytest.raises(NotFoundError):
            store.find(gone, OWNER)
    assert store.find("resp_4", OWNER)
    # One larger than the whole bound is not kept (and evicts nothing).
    store.save(stored("resp_big", text="x" * size * 4))
    assert len(store) == 3
    with pytest.raises(NotFoundError):
        store.find("resp_big", OWNER)


def test_redis_keeps_them_with_their_ttl(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    store = make_response_store(redis_server.url, 30, 1024)
    assert isinstance(store, RedisResponseStore)
    store.save(stored("resp_r"))
    assert store.find("resp_r", OWNER).response["id"] == "resp_r"
    assert 0 < client.pttl("ai-proxy:responses:resp_r") <= 30_000
    with pytest.raises(NotFoundError):
        store.find("resp_r", OTHER)


def test_a_storage_that_fails_loses_no_answer_but_refuses_reads(redis_server):
    store = make_response_store(redis_server.url, 30, 1024)
    redis_server.stop()
    store.save(stored("resp_lost"))  # logged, not raised: the answer still goes out
    with pytest.raises(ResponseStorageError) as info:
        store.find("resp_lost", OWNER)
    assert info.value.status == 503 and info.value.code == "response_storage_unavailable"
    assert (
        "127.0.0.1" not in info.value.message and str(redis_server.port) not in info.value.message
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "memory://"),
        ({"rate_limits": {"storage": "redis://127.0.0.1:1/0"}}, "redis://127.0.0.1:1/0"),
        (
            {"rate_limits": {"storage": "redis://a:1/0"}, "responses": {"storage": "memory://"}},
            "memory://",
        ),
    ],
)
def test_the_storage_defaults_to_the_rate_limit_one(overrides, expected):
    config = load_config(None, env={}, overrides=overrides)
    assert storage_uri(config) == expected


def test_the_cache_storage_wins_over_the_rate_limit_one_when_the_cache_is_on():
    class Cache:
        enabled, storage = True, "redis://cache:6379/1"

    class Config:
        cache = Cache()
        responses = load_config(None, env={}).responses
        rate_limits = load_config(None, env={}).rate_limits

    assert storage_uri(Config()) == "redis://cache:6379/1"
    Config.cache.enabled = False
    assert storage_uri(Config()) == "memory://"


def test_a_memcached_rate_limit_storage_keeps_responses_in_memory():
    assert isinstance(
        make_response_store("memcached://127.0.0.1:11211", 30, 1024), MemoryResponseStore
    )
