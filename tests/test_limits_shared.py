"""memory:// quotas counted once for all the workers of a server (app.hooks.limits_shared).

The table against a dict model (limits' MemoryStorage semantics) over random operations and
passing time; several processes reserving from one file admit exactly the limit; a worker that
dies holding the lock, or forks while another thread holds it, stops nobody; and through
gunicorn, a limit holds across two workers, each made to take every request in turn, and
across a reload.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import resource
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from limits.errors import StorageError

from app import create_app
from app.config import load_config
from app.hooks.limits import SweptMemoryStorage
from app.hooks.limits_batch import Layout, Window
from app.hooks.limits_memory import MemoryBatch
from app.hooks.limits_shared import (
    _COUNT,
    _HEADER_SIZE,
    _HOLDER_AT,
    _SLOT,
    DEFAULT_SLOTS,
    MAX_LOAD,
    SharedBatch,
    SharedCounters,
    SharedMemoryStorage,
    _try_flock,
    share_between_workers,
    table_slots,
)
from app.ratelimit import Quotas, make_batch, make_storage, window_count
from app.worker import QUOTA_FILE, forget_earlier_run
from tests.servers import ProxyServer, wait_until
from tests.test_limits_memory_direct import Clock, step_batches

KEYS = [f"k{i}" for i in range(20)]

OPERATION = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(KEYS), st.integers(0, 9), st.sampled_from([1, 5])),
    st.tuples(st.just("take"), st.sampled_from(KEYS), st.integers(0, 9), st.just(0)),
    st.tuples(st.just("get"), st.sampled_from(KEYS), st.just(0), st.just(0)),
    st.tuples(st.just("clear"), st.sampled_from(KEYS), st.just(0), st.just(0)),
    st.tuples(st.just("wait"), st.just(""), st.integers(0, 3), st.just(0)),
)


def slots_of(counters: SharedCounters) -> list[tuple]:
    return [
        _SLOT.unpack_from(counters._map, _HEADER_SIZE + i * _SLOT.size)
        for i in range(counters.slots)
    ]


def check_table(counters: SharedCounters) -> None:
    """Every counter sits in its run (no empty slot between its home and it), once, and the
    header's count is the number of slots in use."""
    slots = slots_of(counters)
    used = [i for i, slot in enumerate(slots) if slot[0]]
    assert counters._held() == len(used)
    assert len({(slots[i][0], slots[i][1]) for i in used}) == len(used)
    for i in used:
        j = slots[i][0] & counters._mask
        while j != i:
            assert slots[j][0], f"slot {i} is cut off from its home {j}"
            j = (j + 1) & counters._mask


@settings(max_examples=150, deadline=None)
@given(st.lists(OPERATION, max_size=120))
def test_the_table_answers_as_limits_memory_storage_does(tmp_path_factory, operations):
    """A 16-slot table (12 counters at most) against a dict with MemoryStorage's rules: a
    counter that was 0 (or new, or passed) lives `expiry` seconds from the add; take never goes
    below 0; a passed counter reads 0. A full table refuses a new counter only when every
    counter in it is live."""
    path = tmp_path_factory.mktemp("table") / "quotas.bin"
    counters = SharedCounters(str(path), slots=16)
    model: dict[str, tuple[float, int]] = {}  # key: (expires at, value)
    now = 1_700_000_000.5

    def live(key: str) -> int:
        expires, value = model.get(key, (0.0, 0))
        return value if expires > now else 0

    with counters:
        for op, key, amount, expiry in operations:
            if op == "add":
                count = sum(1 for k in model if model[k][0] > now)
                try:
                    got = counters.add(key, amount, expiry, now)
                except StorageError:
                    assert live(key) == 0 and count + 1 > MAX_LOAD * 16
                    assert key not in model or model[key][0] <= now
                    continue
                before = live(key)
                expires = model[key][0] if before else now + expiry
                model[key] = (
                    expires if before + amount != amount else now + expiry,
                    before + amount,
                )
                assert got == before + amount
            elif op == "take":
                got = counters.take(key, amount, now)
                if live(key) or key in model and model[key][0] > now:
                    model[key] = (model[key][0], max(0, model[key][1] - amount))
                assert got == live(key)
            elif op == "get":
                assert counters.get(key, now) == live(key)
            elif op == "clear":
                counters.clear(key)
                model.pop(key, None)
            else:
                now += amount
            check_table(counters)
        for key in KEYS:
            assert counters.get(key, now) == live(key)
            if live(key):
                assert counters.expiry(key) == model[key][0]


def test_a_full_table_is_a_storage_error_until_counters_pass(tmp_path):
    counters = SharedCounters(str(tmp_path / "q.bin"), slots=16)
    now = 1_700_000_000.0
    with counters:
        for i in range(12):
            counters.add(f"k{i}", 1, 10, now)
        with pytest.raises(StorageError):
            counters.add("one-more", 1, 10, now)
        assert counters.add("k3", 1, 10, now) == 2  # a live counter still counts
        assert counters.add("one-more", 1, 10, now + 10) == 1  # the others have passed
        check_table(counters)


def test_a_counter_stops_at_the_largest_value_a_slot_holds(tmp_path):
    counters = SharedCounters(str(tmp_path / "q.bin"), slots=16)
    now = 1_700_000_000.0
    with counters:
        counters.add("k", 2**62, 10, now)
        assert counters.add("k", 2**62, 10, now) == 2**63 - 1
        assert counters.add("k", 10**30, 10, now) == 2**63 - 1
        assert counters.take("k", 2**63 - 1, now) == 0
        assert counters.add("new", 10**30, 10, now) == 2**63 - 1
        assert counters.expiry("new") == now + 10


def test_the_sweep_empties_passed_counters(tmp_path):
    counters = SharedCounters(str(tmp_path / "q.bin"), slots=64)
    now = 1_700_000_000.0
    with counters:
        for i in range(40):
            counters.add(f"k{i}", 1, 1 + i % 2, now)
        # 16 slots a call (a deletion counts as one): 8 calls go round 64 slots.
        for _ in range(8):
            counters._sweep(16, now + 1.5)
        assert counters._held() == 20
        check_table(counters)


WINDOWS = [
    Window("fixed/requests", Layout.FIXED, 5, 60, client=True),
    Window("sliding/tokens", Layout.SLIDING, 300, 60, client=True),
    Window("model/requests", Layout.MOVING, 4, 10),
    Window("model/tokens", Layout.MOVING, 200, 1),
]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("reserve"), st.lists(st.integers(0, 120), min_size=2, max_size=2)),
            st.tuples(st.just("settle"), st.integers(-150, 150)),
            st.tuples(st.just("wait"), st.floats(0, 30, allow_nan=False)),
            st.tuples(st.just("read"), st.just(0)),
        ),
        max_size=25,
    )
)
def test_the_shared_batch_answers_as_the_memory_batch_does(tmp_path_factory, steps):
    clock = Clock()
    original = time.time
    time.time = clock
    try:
        path = tmp_path_factory.mktemp("batch") / "quotas.bin"
        batches = [MemoryBatch(SweptMemoryStorage()), SharedBatch(SharedMemoryStorage(str(path)))]
        marks: list[list] = [[], []]
        for kind, arg in steps:
            answers = step_batches(batches, marks, kind, arg, WINDOWS, clock)
            if answers:
                assert answers[0] == answers[1]
    finally:
        time.time = original


def _reserve_in_child(path: str, start, results, attempts: int) -> None:
    batch = make_batch(SharedMemoryStorage(path))
    start.wait()
    admitted = [0, 0]
    for _ in range(attempts):
        done = batch.reserve([(PROCESS_WINDOWS[0], 1), (PROCESS_WINDOWS[1], 7)], [])
        if done.refused is None:
            admitted[0] += 1
        done = batch.reserve([(PROCESS_WINDOWS[2], 3)], [])
        if done.refused is None:
            admitted[1] += 1
    results.put(admitted)


PROCESS_WINDOWS = [
    Window("team/requests", Layout.MOVING, 37, 60, client=True),
    Window("team/tokens", Layout.SLIDING, 10_000, 60, client=True),
    Window("model/budget", Layout.FIXED, 60, 3600),
]


def test_processes_sharing_the_file_admit_exactly_the_limit(tmp_path):
    """Four processes, 60 tries each, at once: 37 requests, and 20 budget reservations of 3
    against 60, in all; each process alone would have taken 37 and 20."""
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    path = str(tmp_path / "quotas.bin")
    children = [
        context.Process(target=_reserve_in_child, args=(path, start, results, 60)) for _ in range(4)
    ]
    for child in children:
        child.start()
    start.set()
    counts = [results.get(timeout=30) for _ in children]
    for child in children:
        child.join(10)
    assert sum(c[0] for c in counts) == 37
    assert sum(c[1] for c in counts) == 20
    readings = make_batch(SharedMemoryStorage(path)).read(PROCESS_WINDOWS)
    assert [r.used for r in readings] == [37, 37 * 7, 60]


def test_a_worker_dying_with_the_lock_stops_nobody(tmp_path):
    counters = SharedCounters(str(tmp_path / "quotas.bin"))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        counters.__enter__()
        counters.add("k", 1, 60, time.time())
        os._exit(0)  # with the lock held
    os.waitpid(pid, 0)
    with counters:
        assert counters.get("k", time.time()) == 1


def test_the_lock_is_tried_without_the_gil_and_waited_for_with_fcntl(tmp_path):
    """Free, flock is taken and let go by libc directly (the GIL kept, see _libc_flock); held by
    another process, the try fails and the caller waits in fcntl.flock."""
    path = tmp_path / "lock"
    path.write_bytes(b"")
    fd = os.open(path, os.O_RDWR)
    assert _try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert _try_flock(fd, fcntl.LOCK_UN)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child holds the lock a moment
        other = os.open(path, os.O_RDWR)
        fcntl.flock(other, fcntl.LOCK_EX)
        os.write(write, b"x")
        time.sleep(0.3)
        os._exit(0)
    os.read(read, 1)
    assert not _try_flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the child to exit
    os.waitpid(pid, 0)
    assert _try_flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def test_a_fork_while_another_thread_holds_the_lock(tmp_path):
    """The child gets a lock of its own and its own open file (flock keeps them apart)."""
    counters = SharedCounters(str(tmp_path / "quotas.bin"))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with counters:
            held.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            with counters:  # waits for the parent's thread to let the file go
                counters.add("k", 2, 60, time.time())
        finally:
            os._exit(0)
    time.sleep(0.2)
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # the parent's thread still holds the file
    release.set()
    thread.join(5)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    with counters:
        assert counters.get("k", time.time()) == 2


def test_memory_storage_is_shared_only_in_a_servers_workers(tmp_path):
    config = load_config()  # the built-in one
    assert type(make_storage("memory://")) is SweptMemoryStorage
    share_between_workers(str(tmp_path / "quotas.bin"))
    try:
        storage = make_storage("memory://")
        assert isinstance(storage, SharedMemoryStorage)
        assert isinstance(make_batch(storage), SharedBatch)
        assert storage.check()
        assert Quotas(config, storage).shared
    finally:
        share_between_workers(None)
    assert not Quotas(config, make_storage("memory://")).shared


def test_a_file_that_is_not_a_table_is_a_storage_error(tmp_path):
    path = tmp_path / "quotas.bin"
    path.write_bytes(b"not a quota table" * 10)
    storage = SharedMemoryStorage(str(path))
    assert not storage.check()
    with pytest.raises(StorageError):
        make_batch(storage).reserve([(PROCESS_WINDOWS[0], 1)], [])


def test_a_full_table_refuses_a_batch_whole(tmp_path):
    """Room for 6 counters, 2 taken: a batch of three windows (up to 6 new counters) is
    refused before it counts anything, and once room is made it goes through."""
    path = str(tmp_path / "q.bin")
    counters = SharedCounters(path, slots=8)
    now = time.time()
    with counters:
        counters.add("a", 1, 1, now)
        counters.add("b", 1, 3600, now)
    batch = SharedBatch(SharedMemoryStorage(path, slots=8))
    windows = [Window(f"w{i}", layout, 10, 60) for i, layout in enumerate(Layout)]
    with pytest.raises(StorageError):
        batch.reserve([(window, 1) for window in windows], [])
    with counters:
        assert counters._held() == 2
        assert [counters.get(window.key, now) for window in windows] == [0, 0, 0]
    # The refusal is remembered a second (no sweep of the whole table each time); then the
    # counter that has passed makes room for one window, not for three.
    time.sleep(1.05)
    with pytest.raises(StorageError):
        batch.reserve([(window, 1) for window in windows], [])
    assert batch.reserve([(windows[0], 1)], []).admitted
    assert [r.used for r in batch.read(windows)] == [1, 0, 0]


def _fill_table(path: str, count: int) -> None:
    with SharedCounters(path, slots=16) as counters:
        for i in range(count):
            counters.add(f"other{i}", 1, 3600, time.time())


@pytest.mark.parametrize(("on_error", "status"), [("allow", 200), ("deny", 503)])
def test_a_full_table_through_the_proxy(tmp_path, on_error, status):
    """A table full of other counters is a storage failure: served without quotas or refused
    with 503 as `on_storage_error` says (never a 500), with nothing counted."""
    path = str(tmp_path / "quotas.bin")
    _fill_table(path, 11)
    share_between_workers(path)
    try:
        app = create_app(
            {
                "auth": {"tokens": [{"name": "t", "token": TOKEN, "requests_per_minute": 5}]},
                "models": [{"name": "echo", "provider": "echo"}],
                "rate_limits": {"on_storage_error": on_error},
                "default_model": None,
            }
        )
    finally:
        share_between_workers(None)
    answer = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert answer.status_code == status, answer.get_data(as_text=True)
    with SharedCounters(path, slots=16) as counters:
        assert counters._held() == 11


def test_the_table_is_sized_for_the_config(tmp_path, caplog):
    assert table_slots(0) == DEFAULT_SLOTS
    assert table_slots(2000) == 1 << 19  # 2,000 windows of 64 counters, twice, at 3/4 full
    config = load_config(
        overrides={
            "auth": {
                "tokens": [
                    {"name": f"t{i}", "token": f"token-{i:04d}-xxxxxxxx", "requests_per_minute": 5}
                    for i in range(3000)
                ]
            },
            "models": [{"name": "echo", "provider": "echo", "tokens_per_minute": 9}],
            "default_model": None,
        }
    )
    assert window_count(config) == 3001
    share_between_workers(str(tmp_path / "quotas.bin"))
    try:
        storage = make_storage("memory://", window_count(config))
        assert storage.check() and storage.counters.slots == 1 << 19
        # A reload's config of up to twice the windows fits in the table made before it...
        storage = make_storage("memory://", 2 * window_count(config))
        assert storage.check() and storage.counters.slots == 1 << 19
        assert "restart the server" not in caplog.text
        # ... a bigger one keeps it too, and says so.
        storage = make_storage("memory://", 3 * window_count(config))
        assert storage.check() and storage.counters.slots == 1 << 19
        assert "holds 393216 counters, and this config may need up to 576192" in caplog.text
    finally:
        share_between_workers(None)


def test_a_disk_with_no_room_is_a_storage_error(tmp_path):
    """The table's blocks are taken when it is made: no room is a StorageError then, not a
    SIGBUS (which kills the worker) on the first write to a page later."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
            storage = SharedMemoryStorage(str(tmp_path / "quotas.bin"))
            code = 0 if not storage.check() else 2
            with pytest.raises(StorageError):
                make_batch(storage).reserve([(PROCESS_WINDOWS[0], 1)], [])
        except BaseException:  # noqa: BLE001 - the child reports by its exit code
            code = 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_the_tables_blocks_are_allocated_when_it_is_made(tmp_path):
    """Not a sparse file: every block is there before the first counter is written."""
    path = tmp_path / "quotas.bin"
    with SharedCounters(str(path), slots=1024):
        pass
    assert path.stat().st_blocks * 512 >= path.stat().st_size == _HEADER_SIZE + 1024 * _SLOT.size


def test_a_file_whose_making_was_cut_short_is_made_again(tmp_path):
    path = tmp_path / "quotas.bin"
    path.write_bytes(bytes(1000))  # sized, no header: its maker died before writing one
    counters = SharedCounters(str(path), slots=16)
    with counters:
        assert counters.add("k", 3, 60, time.time()) == 3
    assert path.stat().st_size == _HEADER_SIZE + 16 * _SLOT.size


def test_a_holder_that_died_mid_change_is_repaired(tmp_path, caplog):
    """A holder killed part way through a change leaves its mark in the header: the next one
    to take the lock lays the table out again, so a run it broke is whole again."""
    counters = SharedCounters(str(tmp_path / "quotas.bin"), slots=16)
    now = time.time()
    with counters:
        keys = [f"k{i}" for i in range(11)]
        for key in keys:
            counters.add(key, 2, 60, now)
        slots = slots_of(counters)
        # Break a run: empty the home slot of a counter that sits later in it.
        index = next(i for i, slot in enumerate(slots) if slot[0] and slot[0] & counters._mask != i)
        home = slots[index][0] & counters._mask
        start = _HEADER_SIZE + home * _SLOT.size
        lost = slots[home]
        counters._map[start : start + _SLOT.size] = bytes(_SLOT.size)
        moved = slots[index]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child dies holding the lock
        counters.__enter__()
        os._exit(0)
    os.waitpid(pid, 0)
    with counters:
        assert _COUNT.unpack_from(counters._map, _HOLDER_AT)[0] == os.getpid()
        found = {(s[0], s[1]): s[3] for s in slots_of(counters) if s[0]}
        assert found[(moved[0], moved[1])] == 2 and (lost[0], lost[1]) not in found
        assert counters._held() == 10
        check_table(counters)
        assert sum(counters.get(key, now) for key in keys) == 20
    assert "rebuilt" in caplog.text


def test_homes_are_spread_over_every_slot(tmp_path):
    counters = SharedCounters(str(tmp_path / "q.bin"), slots=16)
    assert {counters._hash(f"k{i}")[0] & 1 for i in range(40)} == {0, 1}


def test_a_new_master_keeps_the_quotas_only_when_it_takes_over(tmp_path, monkeypatch):
    """A master started afresh forgets an earlier run's counts; one started by its predecessor
    (USR2, with the listening sockets handed over) counts on beside its old workers."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    table = tmp_path / QUOTA_FILE
    table.write_bytes(b"counts")
    forget_earlier_run(keep_quotas=True)
    assert table.exists()
    forget_earlier_run()
    assert not table.exists()


TOKEN = "sk-shared-quota-client-token"
ADMIN = "shared-quota-admin-token"


def ask(server: ProxyServer, count: int) -> list[int]:
    def one(_):
        return requests.post(
            server.url + "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def test_two_workers_keep_one_limit(tmp_path):
    """6 a minute for the token: 10 asked while only one worker takes connections (the other
    stopped), then 10 while only the other does, then 4 after a reload. Counted apart, each
    worker would admit 6."""
    settings_ = {
        "auth": {
            "tokens": [{"name": "team-a", "token": TOKEN, "requests_per_minute": 6}],
            "admin_token": ADMIN,
        },
        "models": [{"name": "echo", "provider": "echo"}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(settings_))
    server = ProxyServer(path, workers=2, threads=4).start()
    try:
        workers = wait_until(lambda: len(server.worker_pids()) == 2 and server.worker_pids())
        first, second = sorted(workers)
        os.kill(second, signal.SIGSTOP)
        try:
            statuses = ask(server, 10)
        finally:
            os.kill(second, signal.SIGCONT)
        assert statuses.count(200) == 6 and statuses.count(429) == 4, statuses
        os.kill(first, signal.SIGSTOP)
        try:
            statuses = ask(server, 10)
            status = requests.get(
                server.url + "/admin/status",
                headers={"Authorization": f"Bearer {ADMIN}"},
                timeout=10,
            ).json()
        finally:
            os.kill(first, signal.SIGCONT)
        assert statuses == [429] * 10
        # What the other worker counted shows here too, once (not added up per worker).
        (token,) = [t for t in status["tokens"] if t["name"] == "team-a"]
        window = token["quota"]["requests_per_minute"]
        assert window["remaining"] == 0 and window["used"] == 6, window
        # A reload's new workers count on from the same table.
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: len(server.worker_pids() - workers) == 2, timeout=20)
        assert ask(server, 4) == [429] * 4
    finally:
        server.stop()
