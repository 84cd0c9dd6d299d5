"""The `moving-window` strategy: no span of one window ever holds more requests than the limit,
over time as well as under concurrency, and room comes back at most one bucket (a sixtieth of
the window) after an exact log of every request would give it back.

Checked against a model of every admission: in memory over random arrivals, refunds and
passing time (a clock under test control), on a real redis-server over real time (a short
window), and through the proxy (the helper's case: 3 a minute, asked again after 26 and 46 s).
"""

from __future__ import annotations

import tempfile
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.hooks.limits import SweptMemoryStorage
from app.hooks.limits_batch import BUCKETS, Change, Layout, Window
from app.hooks.limits_memory import LimiterBatch, MemoryBatch
from app.hooks.limits_shared import SharedBatch, SharedMemoryStorage
from app.ratelimit import make_batch, make_storage
from tests.test_limits_memory_direct import Clock  # starts off any bucket's edge
from tests.test_ratelimit import make_client, post


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


def check_history(
    admitted: list[float], taken: list[float], refused: list[float], expiry: float, limit: int
):
    """`admitted` (times of requests still counted: not given back) never holds more than
    `limit` in a span of `expiry`; a refusal came only when the last window and a bucket
    held the limit (of `taken`: every admission, given back later or not)."""
    admitted = sorted(admitted)
    for i, start in enumerate(admitted):
        within = [t for t in admitted[i:] if t < start + expiry]
        assert len(within) <= limit, (start, within)
    bucket = expiry / BUCKETS
    for t in refused:
        recent = [a for a in taken if t - expiry - bucket < a <= t]
        assert len(recent) >= limit, (t, recent)


# Files for the "shared memory" batches' tables (one a run of the model), gone at exit.
_TABLES = tempfile.TemporaryDirectory(prefix="ai-proxy-test-quotas-")

BATCHES = {
    "memory": lambda: MemoryBatch(SweptMemoryStorage()),
    "shared memory": lambda: SharedBatch(
        SharedMemoryStorage(tempfile.mktemp(dir=_TABLES.name, suffix=".bin"))
    ),
    "through limits": lambda: MemoryBatch(type("Plain", (SweptMemoryStorage,), {})()),
    "window by window": lambda: LimiterBatch(SweptMemoryStorage()),
}


@pytest.mark.parametrize("kind", list(BATCHES))
@settings(max_examples=80, deadline=None)
@given(
    limit=st.integers(1, 40),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.01, 0.4, 0.99, 1.0, 3.7, 10.0, 29.5, 59.0, 60.0, 61.0]),
            st.booleans(),  # ask (else settle the oldest reservation held)
            st.integers(0, 12),  # what is asked, or what the settled request really used
        ),
        max_size=60,
    ),
)
def test_no_span_of_a_window_holds_more_than_the_limit(kind, limit, steps):
    """Reservations of any size, settled later at what the request really used (a failed
    request: nothing), against a model of every amount taken and when: no span of a window
    holds more than the limit when a reservation is admitted; a refusal comes only when the
    last window and a bucket leave no room; and what the batch reads is what the model holds
    in the buckets that count."""
    clock = Clock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", clock)
        run_steps(kind, limit, steps, clock)


class Taken:
    """One amount in the model: when it was taken and what it counts now."""

    def __init__(self, when: float, amount: int) -> None:
        self.when, self.amount = when, amount
        self.bucket = int(when * BUCKETS // 60)


def run_steps(kind, limit, steps, clock):
    batch = BATCHES[kind]()
    window = Window(f"tokens/{kind}", Layout.MOVING, limit, 60, client=True)
    taken: list[Taken] = []
    held: list[tuple[Taken, int, object]] = []  # (entry, reserved, mark)
    for wait, ask, amount in steps:
        clock.now += wait
        now, current = clock.now, int(clock.now * BUCKETS // 60)

        def counted(start: float, end: float) -> int:
            return sum(t.amount for t in taken if start < t.when <= end)

        if not ask and held:
            entry, reserved, mark = held.pop(0)
            delta = amount - reserved
            batch.adjust([Change(window, delta, mark)])
            if kind != "window by window" and entry.bucket >= current - BUCKETS:
                entry.amount += delta  # on the bucket it was taken from
            elif delta > 0:
                taken.append(Taken(now, delta))  # only more than reserved, counted now
        elif ask:
            done = batch.reserve([(window, amount)], [])
            if done.admitted:
                # The last window held room for it...
                assert counted(now - 60, now) + amount <= limit
                entry = Taken(now, amount)
                taken.append(entry)
                held.append((entry, amount, done.marks[0]))
            else:
                # ... and a refusal means the last window and a bucket held too much.
                assert counted(now - 60 - 60 / BUCKETS, now) + amount > limit
        counting = [t for t in taken if t.bucket >= current - BUCKETS]
        reading = batch.read([window])[0]
        assert reading.used == sum(t.amount for t in counting)
        # Room frees first when the oldest bucket holding anything stops counting.
        oldest = min((t.bucket for t in counting if t.amount), default=None)
        frees = 60 if oldest is None else (oldest + 1) * 60 / BUCKETS + 60 - now
        assert reading.reset_in == pytest.approx(frees)


def test_redis_answers_as_the_model_does(redis_server):
    """The script over random reservations and settles carried in the same round trip (so
    both happen at one moment): what it reads and admits is what a model of every bucket
    holds, at a bucket between the ones the clock showed before and after the call."""
    import random

    rng = random.Random(7)
    batch = make_batch(make_storage(redis_server.url))
    limit = 10_000
    window = Window("LIMITER/tokens/moving-window/token:m/1/2/second", Layout.MOVING, limit, 2)
    buckets: dict[int, int] = {}
    held: list[tuple[int, int]] = []  # (reserved, bucket)
    stop = time.monotonic() + 3
    asked = admitted = 0

    def settled(state, settle, current):
        state = dict(state)
        if settle is not None:
            delta, mark = settle
            if mark >= current - BUCKETS:
                state[mark] = max(0, state.get(mark, 0) + delta)
            elif delta > 0:
                state[current] = state.get(current, 0) + delta
        return state

    while time.monotonic() < stop:
        settle = None
        if held and rng.random() < 0.5:
            reserved, mark = held.pop(rng.randrange(len(held)))
            settle = (rng.randrange(0, 2 * reserved + 1) - reserved, mark)
        amount = rng.randrange(1, 100)
        time.sleep(0.002)
        before = time.time()
        carried = [Change(window, settle[0], settle[1])] if settle else []
        done = batch.reserve([(window, amount)], [], carried=carried)
        after = time.time()
        outcomes = {}
        # (The script's clock is Redis's, in whole milliseconds.)
        first, last = int((before - 0.002) * BUCKETS // 2), int(after * BUCKETS // 2)
        for current in range(first, last + 1):
            state = settled(buckets, settle, current)
            in_span = sum(n for b, n in state.items() if b >= current - BUCKETS)
            fits = in_span + amount <= limit
            if done.readings[0].used == in_span and done.admitted == fits:
                if not fits or done.marks[0] == current:
                    outcomes[current] = state
        assert outcomes, (before, after, done)
        if len({tuple(sorted(state.items())) for state in outcomes.values()}) > 1:
            break  # a call across a bucket's edge that both buckets explain: stop here
        current, buckets = next(iter(outcomes.items()))
        asked += 1
        if done.admitted:
            admitted += 1
            buckets[current] = buckets.get(current, 0) + amount
            held.append((amount, current))
    assert asked > 300 and 0.1 < admitted / asked < 0.9


def test_three_a_minute_over_time(clock):
    """The helper's case: 3 admitted, then asked again 26 and 46 s later (the sliding counter
    let both through); the fourth comes once the first is a minute old, within a second."""
    start = clock.now
    batch = MemoryBatch(SweptMemoryStorage())
    window = Window("requests/three", Layout.MOVING, 3, 60, client=True)
    assert [batch.reserve([(window, 1)], []).admitted for _ in range(20)] == [True] * 3 + [
        False
    ] * 17
    for wait in (26, 20, 13.5):  # 26, 46 and 59.5 s after the three
        clock.now += wait
        refused = batch.reserve([(window, 1)], [])
        assert not refused.admitted
        # Retry-After is when the oldest bucket stops counting: the three's plus a minute.
        first_bucket_end = (int(start * BUCKETS / 60) + 1) * 60 / BUCKETS + 60
        assert refused.readings[0].reset_in == pytest.approx(first_bucket_end - clock.now)
    clock.now = first_bucket_end
    assert [batch.reserve([(window, 1)], []).admitted for _ in range(4)] == [True] * 3 + [False]


def test_a_refund_reaches_an_older_bucket_and_its_summary(clock):
    """A failed request gives its request back to the bucket it was taken from, even after
    later buckets have been read and summed."""
    batch = MemoryBatch(SweptMemoryStorage())
    window = Window("requests/refund", Layout.MOVING, 2, 60, client=True)
    first = batch.reserve([(window, 1)], [])
    clock.now += 10
    assert batch.reserve([(window, 1)], []).admitted
    clock.now += 5
    assert not batch.reserve([(window, 1)], []).admitted  # sums the older buckets
    batch.adjust([Change(window, -1, first.marks[0])])
    assert batch.read([window])[0].used == 1
    assert batch.reserve([(window, 1)], []).admitted
    assert not batch.reserve([(window, 1)], []).admitted
    # A window later the refunded bucket no longer counts: giving back again changes nothing.
    clock.now += 60
    batch.adjust([Change(window, -1, first.marks[0])])
    assert batch.read([window])[0].used == 1  # the one taken at +15 s, counted till +76 s


def test_a_refund_reaches_an_older_bucket_in_redis(redis_server):
    """As above, on a real redis-server: the script drops the summary of older buckets when a
    settle changes one of them, and a settle carried by a reservation lands before it is
    judged."""
    storage = make_storage(redis_server.url)
    batch = make_batch(storage)
    window = Window("LIMITER/requests/moving-window/token:f/2/1/minute", Layout.MOVING, 2, 60)
    first = batch.reserve([(window, 1)], [])
    index = first.marks[0]
    while int(time.time()) == index:  # into the next bucket (a second of a minute)
        time.sleep(0.05)
    assert batch.reserve([(window, 1)], []).admitted
    assert not batch.reserve([(window, 1)], []).admitted  # the older buckets summed
    batch.adjust([Change(window, -1, first.marks[0])])
    assert batch.read([window])[0].used == 1
    assert batch.reserve([(window, 1)], []).admitted
    carried = batch.reserve([(window, 1)], [], carried=[Change(window, -1, first.marks[0])])
    assert not carried.admitted  # the first was given back once: a second time changes nothing
    third = batch.reserve([(window, 1)], [])
    assert not third.admitted and third.readings[0].used == 2


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_settle_into_an_empty_older_bucket_moves_when_room_frees(request, monkeypatch, kind):
    """A reservation of nothing (its bucket left empty) settled later at what it used: the
    window's room now frees when that older bucket stops counting, not the next one."""
    if kind == "redis":
        batch = make_batch(make_storage(request.getfixturevalue("redis_server").url))

        def next_bucket(mark):  # real time: a bucket of a 2 s window is 1/30 s
            # (Redis's clock is in whole ms; a 2 s window's buckets are 33.3 ms.)
            while int((time.time() - 0.002) * BUCKETS // 2) <= mark:
                time.sleep(0.005)

    else:
        clock = Clock()
        monkeypatch.setattr(time, "time", clock)
        batch = MemoryBatch(SweptMemoryStorage())

        def next_bucket(mark):
            clock.now = (mark + 1) * 2 / BUCKETS + 0.001

    def index(mark) -> int:  # Redis names a bucket by its number, memory by its key
        return mark if isinstance(mark, int) else int(mark.rsplit("/m", 1)[1])

    window = Window(f"LIMITER/tokens/moving-window/{kind}/1/2/second", Layout.MOVING, 100, 2)
    nothing = batch.reserve([(window, 0)], [])
    next_bucket(index(nothing.marks[0]))
    five = batch.reserve([(window, 5)], [])
    next_bucket(index(five.marks[0]))

    def frees_at(call):  # (what it read, when room frees by the clock around the call)
        before = time.time()
        answer = call()
        after = time.time()
        return answer, (before - 0.002, after + 0.002)

    # Reading the older buckets: the five's is the oldest.
    late, (before, after) = frees_at(lambda: batch.reserve([(window, 1)], []))
    five_ends = (index(five.marks[0]) + 1) * 2 / BUCKETS + 2
    assert five_ends - after <= late.readings[0].reset_in <= five_ends - before
    batch.adjust([Change(window, 3, nothing.marks[0])])
    reading, (before, after) = frees_at(lambda: batch.read([window])[0])
    assert reading.used == 9
    ends = (index(nothing.marks[0]) + 1) * 2 / BUCKETS + 2
    assert ends - after <= reading.reset_in <= ends - before


@pytest.mark.parametrize("counts", ["requests", "tokens"])
def test_redis_counters_of_an_earlier_version_are_adopted(redis_server, counts):
    """Earlier builds counted moving windows (and every token and budget window) with limits'
    sliding-window counter under the same key: after an upgrade the moving window counts what
    that counter held, for a whole window from then, and the old counters go."""
    import redis
    from limits import RateLimitItemPerMinute
    from limits.strategies import SlidingWindowCounterRateLimiter

    storage = make_storage(redis_server.url)
    store = redis.Redis(port=redis_server.port)
    item = RateLimitItemPerMinute(10)
    scope = (
        ("requests", "moving-window", "token:a")
        if counts == "requests"
        else (
            "tokens",
            "sliding-window-counter",
            "token:a",
        )
    )
    assert SlidingWindowCounterRateLimiter(storage).hit(item, *scope, cost=7)
    window = Window(item.key_for(*scope), Layout.MOVING, 10, 60)
    batch = make_batch(storage)
    old = f"LIMITS:{{{window.key}}}"
    assert int(store.get(old)) == 7
    assert batch.read([window])[0].used == 7
    assert not store.exists(old) and not store.exists(old + "/-1")
    done = batch.reserve([(window, 3)], [])
    assert done.admitted and not batch.reserve([(window, 1)], []).admitted
    assert batch.read([window])[0].used == 10


def test_window_by_window_reads_a_moving_window_once_a_request(redis_server):
    """The window-by-window batch reads a moving window's 61 counters once a request (after
    adding to the current one: the same reading says whether it fits and what it held)."""
    import redis

    storage = make_storage(redis_server.url)
    store = redis.Redis(port=redis_server.port)
    batch = LimiterBatch(storage)
    window = Window("LIMITER/requests/moving-window/token:o/5/1/minute", Layout.MOVING, 5, 60)
    assert batch.reserve([(window, 1)], []).admitted
    store.config_resetstat()
    done = batch.reserve([(window, 1)], [])
    assert done.admitted and done.readings[0].used == 1
    assert store.info("commandstats")["cmdstat_get"]["calls"] == BUCKETS + 1


def test_a_draining_earlier_build_is_adopted_within_a_bucket(redis_server):
    """An earlier build's process still draining settles on the old sliding counter after a
    new one has started counting the window: the new build takes it in at its next bucket."""
    from limits import RateLimitItemPerSecond
    from limits.strategies import SlidingWindowCounterRateLimiter

    storage = make_storage(redis_server.url)
    item = RateLimitItemPerSecond(100, 2)
    scope = ("tokens", "sliding-window-counter", "token:d")
    window = Window(item.key_for(*scope), Layout.MOVING, 100, 2)
    batch = make_batch(storage)
    first = batch.reserve([(window, 10)], [])
    assert first.admitted and first.readings[0].used == 0
    assert SlidingWindowCounterRateLimiter(storage).hit(item, *scope, cost=30)
    while int((time.time() - 0.002) * BUCKETS // 2) <= first.marks[0]:  # Redis: whole ms
        time.sleep(0.005)
    assert batch.read([window])[0].used == 40


def test_the_moving_clock_never_runs_back_in_redis(redis_server):
    """The script's moving windows use the latest time seen (a failover to a server whose
    clock is behind, a clock stepped back): requests then go to the latest bucket, which the
    summaries of older buckets do not hold."""
    import redis

    storage = make_storage(redis_server.url)
    store = redis.Redis(port=redis_server.port)
    batch = make_batch(storage)
    window = Window("LIMITER/requests/moving-window/token:c/5/1/minute", Layout.MOVING, 5, 60)
    ahead = int(time.time() * 1000) + 3_000  # as if the clock had been 3 s ahead
    store.set(storage.prefixed_key("ai-proxy/moving-window-clock"), ahead, px=60_000)
    done = batch.reserve([(window, 1)], [])
    assert done.marks[0] == ahead // 1000


def test_the_memory_clock_never_runs_back(clock):
    """The same in memory: stepped back, requests still go to the latest bucket, so the
    older buckets' summary stays true when the clock comes back."""
    batch = MemoryBatch(SweptMemoryStorage())
    window = Window("requests/clock", Layout.MOVING, 5, 60, client=True)
    assert batch.reserve([(window, 1)], []).admitted
    clock.now += 3
    assert batch.reserve([(window, 1)], []).admitted  # sums the older buckets
    clock.now -= 2.5
    assert all(batch.reserve([(window, 1)], []).admitted for _ in range(3))
    clock.now += 2.5
    assert not batch.reserve([(window, 1)], []).admitted
    assert batch.read([window])[0].used == 5


def test_a_clock_far_ahead_is_not_held_in_redis(redis_server):
    """A clock seen an hour ahead (stepped forward, then back) is not held: every moving
    window would stay full until real time caught up."""
    import redis

    storage = make_storage(redis_server.url)
    store = redis.Redis(port=redis_server.port)
    batch = make_batch(storage)
    window = Window("LIMITER/requests/moving-window/token:f/1/1/minute", Layout.MOVING, 1, 60)
    clock_key = storage.prefixed_key("ai-proxy/moving-window-clock")
    store.set(clock_key, int(time.time() * 1000) + 3_600_000, px=60_000)
    before = time.time()
    done = batch.reserve([(window, 1)], [])
    assert int(before) <= done.marks[0] <= int(time.time())
    assert int(store.get(clock_key)) <= time.time() * 1000  # the real time, kept from now on


def test_a_memory_clock_far_ahead_is_not_held(clock):
    batch = MemoryBatch(SweptMemoryStorage())
    window = Window("requests/ahead", Layout.MOVING, 1, 60, client=True)
    clock.now += 3600  # stepped an hour forward...
    assert batch.reserve([(window, 1)], []).admitted
    clock.now -= 3600 - 70  # ... and back: a window later in real time, room again
    assert batch.reserve([(window, 1)], []).admitted
    assert not batch.reserve([(window, 1)], []).admitted


def test_a_cleared_storage_forgets_the_summary(clock):
    """The summary of older buckets lives in the storage itself: clearing the storage (as a
    test or a tool does) clears it with the buckets."""
    storage = SweptMemoryStorage()
    batch = MemoryBatch(storage)
    window = Window("requests/reset", Layout.MOVING, 1, 60, client=True)
    assert batch.reserve([(window, 1)], []).admitted
    clock.now += 5
    assert not batch.reserve([(window, 1)], []).admitted
    storage.reset()
    assert batch.reserve([(window, 1)], []).admitted


def test_redis_over_real_time(redis_server):
    """A 2 s window of 3 on a real redis-server, asked by three threads for 5 s: no span of
    2 s holds more than 3 admissions, and refusals come only while the window (and a bucket)
    is full. Each admission is known to lie between the times its call started and ended."""
    batch = make_batch(make_storage(redis_server.url))
    window = Window("LIMITER/requests/moving-window/token:r/3/2/second", Layout.MOVING, 3, 2)
    calls: list[tuple[float, float, bool]] = []
    lock = threading.Lock()
    stop = time.monotonic() + 5

    def ask():
        while time.monotonic() < stop:
            before = time.time()
            done = batch.reserve([(window, 1)], [])
            after = time.time()
            with lock:
                calls.append((before, after, done.admitted))
            time.sleep(0.013)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = sorted((b, a) for b, a, ok in calls if ok)
    assert len(admitted) >= 6  # the window came round at least twice
    for before, _ in admitted:
        # Every admission that surely lies in [before, before + 2 s).
        within = [1 for b, a in admitted if b >= before and a < before + 2]
        assert len(within) <= 3, before
    bucket = 2 / BUCKETS
    for before, after, ok in calls:
        if not ok:
            recent = [1 for b, a in admitted if a > before - 2 - bucket and b <= after]
            assert len(recent) >= 3, before


def test_the_proxy_keeps_three_a_minute_over_time(make_app, monkeypatch):
    """Through the proxy (memory quotas, the clock under test control): three requests a
    minute, the fourth refused at 26, 46 and 59 s, with Retry-After telling when it fits."""
    from tests.test_ratelimit import FrozenTime

    frozen = FrozenTime(monkeypatch)
    frozen.advance(40)  # mid-minute: a counter per calendar minute lets the fourth in at 26 s
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "requests_per_minute": 3}]},
            "models": [{"name": "echo", "provider": "echo"}],
        },
    )
    assert [post(client).status_code for _ in range(3)] == [200] * 3
    waited = 0
    for wait in (26, 20, 13):
        frozen.advance(wait)
        waited += wait
        refused = post(client)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) == 61 - waited
    frozen.advance(61 - waited)
    assert [post(client).status_code for _ in range(4)] == [200] * 3 + [429]


def test_the_proxy_keeps_a_token_window_over_time(make_app, monkeypatch, upstream):
    """Tokens (and so budgets, counted the same way) over time: 20 tokens a minute used 30 s
    before a calendar minute ends are still counted 30 s after it (a counter per calendar
    minute weighs them at half and lets 10 more through)."""
    from tests.conftest import openai_model
    from tests.stub_upstream import Reply, chat_completion
    from tests.test_ratelimit import FrozenTime

    frozen = FrozenTime(monkeypatch)
    frozen.advance(30)
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "tokens_per_minute": 20}]},
            "models": [openai_model(upstream, name="gpt")],
        },
    )
    upstream.default = Reply(
        body=chat_completion(usage={"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10})
    )
    assert [post(client, "gpt", max_tokens=8).status_code for _ in range(2)] == [200, 200]
    frozen.advance(59)  # 29 s into the next calendar minute
    refused = post(client, "gpt", max_tokens=8)
    assert refused.status_code == 429
    assert "tokens_per_minute for token a" in refused.json["error"]["message"]
    assert int(refused.headers["Retry-After"]) == 2  # the first bucket stops at 61 s
    frozen.advance(2)
    assert post(client, "gpt", max_tokens=8).status_code == 200


@pytest.fixture
def memcached_url(tmp_path):
    """A real memcached on a free port (`.ci/run` installs it and pymemcache)."""
    import shutil
    import socket
    import subprocess

    from tests.servers import free_port

    binary = shutil.which("memcached")
    if binary is None:
        pytest.fail("memcached is not installed (apt-get install memcached)")
    port = free_port()
    proc = subprocess.Popen([binary, "-p", str(port), "-l", "127.0.0.1", "-U", "0", "-u", "root"])
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield f"memcached://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("kind", ["redis", "memcached"])
@pytest.mark.parametrize("layout", [Layout.FIXED, Layout.MOVING, Layout.SLIDING])
@pytest.mark.parametrize("expiry", [60, 30 * 86400])  # a minute, limits' month
def test_window_by_window_on_real_storages(request, kind, layout, expiry):
    """The window-by-window batch (Redis clusters and memcached) on limits' own storages: a
    refusal takes back what it added (these storages have no `decr`), and no window admits
    past its limit, a month's included (memcached reads a time to live over 30 days as a
    date: a month's counters expired at once)."""
    url = (
        request.getfixturevalue("redis_server").url
        if kind == "redis"
        else request.getfixturevalue("memcached_url")
    )
    storage = make_storage(url)
    batch = LimiterBatch(storage)
    window = Window(f"LIMITER/requests/{layout.name}/token:w/3/{expiry}", layout, 3, expiry)
    answers = [batch.reserve([(window, 1)], []).admitted for _ in range(6)]
    assert answers == [True] * 3 + [False] * 3
    assert batch.read([window])[0].used == 3  # the refusals took back what they added
    bigger = batch.reserve([(window, 5)], [])
    assert not bigger.admitted and batch.read([window])[0].used == 3


@pytest.mark.parametrize(
    ("strategy", "requests", "usage"),
    [
        ("moving-window", Layout.MOVING, Layout.MOVING),
        ("sliding-window-counter", Layout.SLIDING, Layout.SLIDING),
        # Token and budget windows stay sliding counters: a fixed window would forget what an
        # earlier build counted for them, and let a budget be spent twice across its edge.
        ("fixed-window", Layout.FIXED, Layout.SLIDING),
    ],
)
def test_which_windows_each_strategy_moves(make_app, strategy, requests, usage):
    from tests.test_ratelimit import EVERY_KIND

    app = make_app(
        {
            "auth": {"tokens": [EVERY_KIND]},
            "models": [{"name": "echo", "provider": "echo", "tokens_per_minute": 50}],
            "rate_limits": {"strategy": strategy},
        }
    )
    quotas = app.extensions["ai_proxy"].quotas
    assert {limit.layout for limit in quotas.tokens["token:a"]} == {requests}
    usage_windows = [*quotas.token_usage["token:a"], *quotas.model_tokens["model:echo#0"]]
    assert len(usage_windows) == 3 and {limit.layout for limit in usage_windows} == {usage}
