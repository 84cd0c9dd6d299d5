"""The worker's elastic request-thread pool (app.threads): it runs everything submitted, starts
threads up to its maximum as the load needs, and ends idle ones; and the idle-connection
reaper the watchdog runs for the upstream pool."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import CancelledError

import pytest
import requests

from app import threads, watchdog
from app import upstream as upstream_module
from app.config import RetryConfig
from app.threads import ElasticThreadPool
from app.upstream import UpstreamPool
from app.worker import ProxyWorker
from tests.servers import ROOT, wait_until
from tests.stub_upstream import Reply, StubUpstream


@pytest.fixture
def pool():
    pool = ElasticThreadPool(4, idle_seconds=0.05)
    yield pool
    pool.shutdown(wait=True)


def test_results_and_errors_reach_their_futures(pool):
    assert pool.submit(lambda a, b=0: a + b, 2, b=3).result(timeout=5) == 5
    with pytest.raises(ZeroDivisionError):
        pool.submit(lambda: 1 / 0).result(timeout=5)


def test_threads_grow_to_the_maximum_under_load_and_end_once_idle(pool):
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> str:
        started.release()
        release.wait(10)
        return threading.current_thread().name

    futures = [pool.submit(hold) for _ in range(6)]
    for _ in range(4):
        assert started.acquire(timeout=5)
    # Four run at once; the other two wait for a free thread, as gunicorn's pool does.
    assert pool.threads == 4
    assert not started.acquire(timeout=0.05)
    release.set()
    assert {f.result(timeout=5) for f in futures} <= {"ai-proxy-request"}
    assert wait_until(lambda: pool.threads == 0, timeout=5)
    # A pool that shrank to nothing serves again.
    assert pool.submit(lambda: "again").result(timeout=5) == "again"


def test_an_idle_thread_is_reused_before_a_new_one_starts():
    pool = ElasticThreadPool(8, idle_seconds=30)
    try:
        for n in range(20):
            assert pool.submit(lambda n=n: n).result(timeout=5) == n
        # One request at a time needs one thread (two at most while one hands its permit back).
        assert pool.threads <= 2
    finally:
        pool.shutdown(wait=True)
    assert pool.threads == 0


def test_many_submitters_lose_no_work():
    pool = ElasticThreadPool(3, idle_seconds=0.001)
    try:
        done = []
        lock = threading.Lock()

        def work(i: int) -> None:
            with lock:
                done.append(i)

        futures = []

        def submitter(base: int) -> None:
            futures.extend(pool.submit(work, base + i) for i in range(200))

        submitters = [threading.Thread(target=submitter, args=(k * 1000,)) for k in range(4)]
        for thread in submitters:
            thread.start()
        for thread in submitters:
            thread.join()
        for future in futures:
            future.result(timeout=10)
        assert sorted(done) == sorted(k * 1000 + i for k in range(4) for i in range(200))
    finally:
        pool.shutdown(wait=True)


def test_shutdown_refuses_new_work_and_can_cancel_queued_work():
    pool = ElasticThreadPool(1, idle_seconds=30)
    release, started = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return release.wait(10)

    running = pool.submit(hold)
    assert started.wait(5)
    queued = pool.submit(lambda: "never")
    pool.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    with pytest.raises(CancelledError):
        queued.result(timeout=5)
    release.set()
    assert running.result(timeout=5) is True
    assert wait_until(lambda: pool.threads == 0, timeout=5)


# gunicorn's SIGQUIT handler calls `shutdown(False)` in the worker's main thread, which may be
# inside `submit` at that moment: with the pool's lock held, or in Thread.start.
SHUTDOWN_FROM_A_SIGNAL = """
import os, signal, threading
from app.threads import ElasticThreadPool
pool = ElasticThreadPool(4, idle_seconds=30)
signal.signal(signal.SIGUSR1, lambda *_: pool.shutdown(False))
with pool._lock:
    os.kill(os.getpid(), signal.SIGUSR1)   # the handler runs here, the lock held
    for _ in range(1000):
        pass
ran = threading.Event()
signal.signal(signal.SIGUSR2, lambda *_: pool.shutdown(False))
pool = ElasticThreadPool(4, idle_seconds=30)
real_start = threading.Thread.start
def start_with_a_signal(self):
    os.kill(os.getpid(), signal.SIGUSR2)   # the handler runs while submit starts a thread
    real_start(self)
threading.Thread.start = start_with_a_signal
pool.submit(ran.set)
threading.Thread.start = real_start
assert ran.wait(5)
print("exited cleanly")
"""


def test_shutdown_from_a_signal_handler_in_the_submitting_thread_does_not_deadlock():
    done = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_FROM_A_SIGNAL],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "exited cleanly" in done.stdout


def test_the_heap_is_trimmed_once_ending_threads_settle(pool, monkeypatch):
    trims = []
    monkeypatch.setattr(threads, "trim_heap", lambda: trims.append(1))
    pool.submit(lambda: None).result(timeout=5)
    assert wait_until(lambda: pool.threads == 0, timeout=5)
    ended = pool._last_end
    assert not pool.trim_if_settled(ended)  # threads may still be ending
    assert pool.trim_if_settled(ended + threads.TRIM_AFTER_SECONDS)
    assert not pool.trim_if_settled(ended + 3600)  # nothing ended since
    assert trims == [1]


def test_a_settled_wave_lets_go_of_names_the_type_cache_kept(pool):
    """CPython's type attribute cache keeps a reference to each name looked up through it; a
    name a request made at run time lives on in it until the wave of ending threads settles."""

    class Target:
        pass

    name = "".join(["made_at_", "run_time"])  # a new string, not interned
    alone = sys.getrefcount(name)
    pool.submit(getattr, Target, name, None).result(timeout=5)
    assert sys.getrefcount(name) > alone  # held by the cache
    assert wait_until(lambda: pool.threads == 0, timeout=5)
    assert pool.trim_if_settled(pool._last_end + threads.TRIM_AFTER_SECONDS)
    assert sys.getrefcount(name) == alone


def test_emptying_the_type_cache_keeps_version_tags_unique():
    """The interpreter's specialised attribute look-ups are keyed by a type's version tag: after
    the cache is emptied, no new type may be given a tag an older one still holds."""
    testcapi = pytest.importorskip("_testcapi")
    get_version = getattr(testcapi, "type_get_version", None)
    if get_version is None:
        pytest.skip("no _testcapi.type_get_version here")
    tags = []
    for _ in range(20):
        kind = type("Kind", (), {"field": 1})
        kind.field  # noqa: B018 - a look-up gives the type its tag
        tags.append(get_version(kind))
        threads.forget_attribute_names()
    assert 0 not in tags
    assert len(set(tags)) == len(tags)


# In a process of its own: 300 requests on as many threads, each making a name at run time
# (as gunicorn's Date header does) among its other objects; the small-object arenas (1 MiB)
# allocated before, once the threads have ended, and after the pool's trim.
ARENAS_SCRIPT = """
import gc, os, re, sys, threading, time
from app import threads

def arenas():
    read, write = os.pipe()
    saved = os.dup(2)
    os.dup2(write, 2)
    try:
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write)
    text = os.read(read, 1 << 20).decode()
    os.close(read)
    return int(re.search(r"arenas allocated current\\s*=\\s*([\\d,]+)", text)[1].replace(",", ""))

class Target:
    pass

pool = threads.ElasticThreadPool(400, idle_seconds=0.2)
gate = threading.Event()

def request(i):
    objects = [{"n": str(j) * 3, "k": (j, j + 1)} for j in range(400)]
    getattr(Target, "field_%d" % i, None)
    gate.wait(10)
    return len(objects)

gc.collect()
before = arenas()
futures = [pool.submit(request, i) for i in range(300)]
time.sleep(0.5)
gate.set()
for future in futures:
    future.result(10)
del futures, future
while pool.threads:
    time.sleep(0.05)
gc.collect()
ended = arenas()
pool.trim_if_settled(time.monotonic() + 10)
print(before, ended, arenas())
"""


def test_arenas_a_burst_of_threads_used_go_back_once_they_have_ended():
    done = subprocess.run(
        [sys.executable, "-c", ARENAS_SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    before, ended, trimmed = map(int, done.stdout.split())
    assert ended - before > 20  # the burst's objects are gone, but names kept its arenas
    assert trimmed - before < (ended - before) / 3


def test_trim_heap_and_limit_arenas_run_here():
    # glibc on this machine; elsewhere both are no-ops that say so.
    assert threads.trim_heap() in (True, False)
    assert threads.limit_arenas() in (True, False)


def test_the_gunicorn_worker_uses_the_elastic_pool():
    worker = ProxyWorker.__new__(ProxyWorker)
    worker.cfg = type("Cfg", (), {"threads": 7})()
    pool = worker.get_thread_pool()
    try:
        assert isinstance(pool, ElasticThreadPool)
        assert pool.max_workers == 7
    finally:
        pool.shutdown()


def _upstream_pool(size: int) -> UpstreamPool:
    return UpstreamPool(
        RetryConfig(max_retries=0, base_delay=0.0, max_delay=0.0, jitter=0.0), pool_size=size
    )


def _chat(pool: UpstreamPool, upstream, **extra) -> requests.Response:
    """One answer from the stub through `pool`."""
    upstream.queue(Reply(body={"ok": True}))
    return pool.send(
        "POST",
        upstream.url + "/v1/chat/completions",
        label="test",
        headers={},
        body=b"{}",
        timeout=(5, 5),
        **extra,
    )


def test_the_watchdog_closes_upstream_connections_idle_past_their_limit(upstream):
    pool = _upstream_pool(4)
    try:
        for _ in range(2):
            response = _chat(pool, upstream, idle_timeout=0.2)
            response.content  # noqa: B018 - read to its end: the connection goes back
        assert pool.connections() == {"in_use": 0, "idle": 1}
        # The watchdog's housekeeping closes it about a second after it passes its limit.
        assert wait_until(lambda: pool.connections()["idle"] == 0, timeout=5)
        assert _chat(pool, upstream).json() == {"ok": True}
    finally:
        pool.close()


def _connections_through(threads_pool: ElasticThreadPool, pool: UpstreamPool, upstream, count: int):
    """`count` answers at once through `pool`, each on a thread of `threads_pool`: each holds a
    connection of its own until all have one."""
    together = threading.Barrier(count)

    def call() -> None:
        together.wait(5)  # all at once: each takes its own connection
        response = _chat(pool, upstream)
        together.wait(5)  # none gives its connection back before all have one
        assert response.json() == {"ok": True}

    for future in [threads_pool.submit(call) for _ in range(count)]:
        future.result(timeout=10)


def test_connections_a_burst_s_ended_threads_used_are_closed_once_the_wave_settles(upstream):
    """A burst's pooled upstream connections go when its threads do, not at the end of their
    idle timeout (90 s by default), down to what the threads still alive can use at once."""
    threads_pool = ElasticThreadPool(8, idle_seconds=0.05)
    pool = _upstream_pool(8)
    try:
        _connections_through(threads_pool, pool, upstream, 6)
        assert pool.connections() == {"in_use": 0, "idle": 6}
        ports = {r.headers["X-Client-Port"] for r in upstream.requests}
        assert len(ports) == 6
        assert wait_until(lambda: threads_pool.threads == 0, timeout=5)
        assert threads_pool.trim_if_settled(threads_pool._last_end + threads.TRIM_AFTER_SECONDS)
        assert pool.connections() == {"in_use": 0, "idle": upstream_module.KEEP_IDLE}
        # What is kept serves the next answers; what was closed is opened again when needed.
        _connections_through(threads_pool, pool, upstream, 6)
        assert pool.connections() == {"in_use": 0, "idle": 6}
        new_ports = {r.headers["X-Client-Port"] for r in upstream.requests} - ports
        assert len(new_ports) == 6 - upstream_module.KEEP_IDLE
    finally:
        threads_pool.shutdown(wait=True)
        pool.close()


@pytest.mark.parametrize(("alive", "kept"), [(0, 2), (1, 2), (4, 4), (6, 6), (9, 6)])
def test_an_origin_keeps_pooled_connections_for_the_threads_still_alive(upstream, alive, kept):
    threads_pool = ElasticThreadPool(8)
    pool = _upstream_pool(8)
    try:
        _connections_through(threads_pool, pool, upstream, 6)
        assert pool.connections() == {"in_use": 0, "idle": 6}
        assert pool.close_surplus(alive) == 6 - kept
        assert pool.connections() == {"in_use": 0, "idle": kept}
    finally:
        threads_pool.shutdown(wait=True)
        pool.close()


def test_each_origin_keeps_its_own_share(upstream):
    """Two upstreams: each origin's pool keeps what the threads can use, independently."""
    other = StubUpstream()
    threads_pool = ElasticThreadPool(8)
    pool = _upstream_pool(8)
    try:
        _connections_through(threads_pool, pool, upstream, 5)
        _connections_through(threads_pool, pool, other, 3)
        assert pool.connections() == {"in_use": 0, "idle": 8}
        assert pool.close_surplus(1) == (5 - 2) + (3 - 2)
        assert pool.connections() == {"in_use": 0, "idle": 4}
        assert pool.close_surplus(4) == 0
    finally:
        threads_pool.shutdown(wait=True)
        pool.close()
        other.close()


def test_a_release_that_fails_or_is_gone_does_not_stop_the_trim(pool, monkeypatch):
    trims, told = [], []
    monkeypatch.setattr(threads, "trim_heap", lambda: trims.append(1))
    monkeypatch.setattr(threads, "_ON_SETTLED", watchdog.WeakMethods("test release failed"))

    class Broken:
        def release(self, alive: int) -> None:
            raise RuntimeError("boom")

    class Listening:
        def release(self, alive: int) -> None:
            told.append(alive)

    class Gone:
        def release(self, alive: int) -> None:
            told.append("gone")

    broken, listening, gone = Broken(), Listening(), Gone()
    for each in (broken, gone, listening):
        threads.on_threads_settled(each.release)
    del gone
    pool.submit(lambda: None).result(timeout=5)
    assert wait_until(lambda: pool.threads == 0, timeout=5)
    assert pool.trim_if_settled(pool._last_end + threads.TRIM_AFTER_SECONDS)
    assert told == [0]
    assert trims == [1]
    threads.on_threads_settled(listening.release)  # registering prunes what is gone
    assert len(threads._ON_SETTLED) == 3


def test_a_deployment_s_shorter_idle_limit_wins_for_its_origin():
    pool = _upstream_pool(2)
    pool.session("http://127.0.0.1:1/a", idle_timeout=90)
    pool.session("http://127.0.0.1:1/b", idle_timeout=5)
    pool.session("http://127.0.0.1:1/c", idle_timeout=60)
    pool.session("http://127.0.0.1:1/d")
    assert pool._idle_limits == {"http://127.0.0.1:1": 5}
    assert isinstance(pool.session("http://127.0.0.1:1/e"), requests.Session)


def test_housekeeping_forgets_services_that_are_gone():
    dog = watchdog.Watchdog()
    calls = []

    class Service:
        def chore(self) -> None:
            calls.append(1)

    service = Service()
    dog.every(service.chore)
    dog.run_chores()
    del service
    dog.run_chores()
    assert calls[:1] == [1]
    assert dog._chores == []


def test_a_thread_that_cannot_start_is_not_counted(monkeypatch):
    pool = ElasticThreadPool(2, idle_seconds=30)

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)
    assert pool.threads == 0
    monkeypatch.undo()
    assert pool.submit(lambda: "ran").result(timeout=5) == "ran"
    pool.shutdown(wait=True)
