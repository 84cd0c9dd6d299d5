"""The Redis quota batch's own wire path (app.hooks.limits_batch._Wire): the script reloaded
when the server forgot it, errors as limits' StorageError, connections shared with the client's
pool, and answers the same as redis-py's own EVALSHA."""

from __future__ import annotations

import os

import pytest
import redis
from limits import RateLimitItemPerMinute
from limits.errors import StorageError

from app.hooks.limits_batch import Change, Layout, RedisBatch, Window
from app.ratelimit import make_batch, make_storage


def window(name: str, layout: Layout = Layout.SLIDING, limit: int = 10) -> Window:
    item = RateLimitItemPerMinute(limit)
    return Window(item.key_for("tokens", "wire", name), layout, limit, item.get_expiry())


@pytest.fixture
def batch(redis_server) -> RedisBatch:
    made = make_batch(make_storage(redis_server.url))
    assert isinstance(made, RedisBatch)
    return made


@pytest.mark.parametrize("forget", ["SCRIPT FLUSH", "FLUSHALL"])
def test_a_forgotten_script_is_loaded_again(batch, redis_server, forget):
    first = window("token:a")
    assert batch.reserve([(first, 4)], []).admitted
    redis.Redis(port=redis_server.port).execute_command(forget)
    done = batch.reserve([(first, 4)], [])
    assert done.admitted
    expected = 8 if forget == "SCRIPT FLUSH" else 4
    assert batch.read([first])[0].used == expected


def test_a_script_error_is_a_storage_error_and_the_connection_stays_usable(batch, redis_server):
    store = redis.Redis(port=redis_server.port)
    key = batch._key(window("token:b", Layout.FIXED))
    store.rpush(key, "x")  # a fixed window's counter that is not a number: the script fails
    with pytest.raises(StorageError):
        batch.reserve([(window("token:b", Layout.FIXED), 1)], [])
    assert batch.reserve([(window("token:c"), 1)], []).admitted
    assert len(batch.client.connection_pool._in_use_connections) == 0


def test_a_server_gone_is_a_storage_error_and_a_new_one_is_used(redis_server):
    batch = make_batch(make_storage(redis_server.url))
    assert batch.reserve([(window("token:d"), 1)], []).admitted
    redis_server.stop()
    with pytest.raises(StorageError):
        batch.reserve([(window("token:d"), 1)], [])
    redis_server.start()
    done = batch.reserve([(window("token:d"), 1)], [])
    assert done.admitted and done.readings[0].used == 0


def test_answers_match_redis_py_evalsha(batch, redis_server):
    """The hand-packed command is the one redis-py would send: same script, same answer."""
    keys = [batch._key(window(f"token:{n}")) for n in ("e", "f")]
    args = ['["read",2,1,60,1,60]']
    ours = batch.script(keys, args)
    theirs = redis.Redis(port=redis_server.port).evalsha(batch._script.sha, len(keys), *keys, *args)
    assert ours == theirs


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_uses_connections_of_its_own(batch):
    first = window("token:g")
    assert batch.reserve([(first, 1)], []).admitted
    pid = os.fork()
    if pid == 0:  # the child: a reservation on its own connection, then out
        code = 0
        try:
            code = 0 if batch.reserve([(first, 1)], []).admitted else 1
        except BaseException:  # noqa: BLE001 - the child reports by exit code only
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert batch.reserve([(first, 1)], []).admitted
    assert batch.read([first])[0].used == 3  # the parent's two and the child's one


def test_a_reservation_reads_each_counter_s_time_to_live_once(batch, redis_server):
    """Settles carried on the reservation's own windows, and windows already rolled (with a
    previous counter): one PTTL per counter, whatever touches it (INFO commandstats)."""
    store = redis.Redis(port=redis_server.port)
    windows = [window(f"token:ttl{n}", limit=10**6) for n in range(3)]
    for w in windows:
        key = batch._key(w)
        store.set(key + "/-1", 5, px=30_000)  # rolled: the previous window still counts
        store.set(key, 1, px=90_000)
    first = batch.reserve([(w, 1) for w in windows], [])
    carried = [Change(w, -1, mark) for w, mark in zip(windows, first.marks, strict=True)]
    store.config_resetstat()
    done = batch.reserve([(w, 1) for w in windows], [], carried=carried)
    assert done.admitted
    stats = store.info("commandstats")
    assert stats["cmdstat_pttl"]["calls"] == len(windows)
    assert stats["cmdstat_evalsha"]["calls"] == 1
    # What they count: 1 + 1 + 1 - 1 (settled) in the current window, and half of the previous.
    assert [r.used for r in done.readings] == [1 + 2] * 3
