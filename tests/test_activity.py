"""Activity counts: each worker's own, published to a board, the same merged view from any."""

from __future__ import annotations

import json
import os

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from app.activity import (
    KEEP_SECONDS,
    LIVE_SECONDS,
    MINUTES,
    Activity,
    FileBoard,
    Merged,
    RedisBoard,
    deployment_activity,
    read_snapshot,
)
from app.errors import UpstreamError

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def worker(board, name: str, clock: Clock, in_flight: dict | None = None) -> Activity:
    activity = Activity(board, clock=clock, live=lambda: {"in_flight": in_flight or {}})
    activity._worker = name  # several "workers" in one test process
    activity._pid = os.getpid()  # as if its publisher ran: the test publishes
    return activity


def view(activity: Activity, key: str) -> dict:
    merged = Merged(activity.snapshots(), activity.clock())
    return {**deployment_activity(merged, key), "errors": merged.errors(), "costs": merged.costs()}


@pytest.fixture(params=["file", "redis"])
def board(request, tmp_path):
    if request.param == "file":
        return FileBoard(tmp_path)
    server = request.getfixturevalue("redis_server")
    return RedisBoard(redis.Redis.from_url(server.url))


def test_every_worker_sees_the_same_numbers(board):
    clock = Clock()
    one = worker(board, "host:1", clock, {"m#0": 2})
    two = worker(board, "host:2", clock, {"m#0": 1})
    for _ in range(3):
        one.attempt("m#0", "success", 0.1)
    two.attempt("m#0", "success", 0.3)
    two.attempt("m#0", "retryable", 1.0, "m", UpstreamError("upstream m (openai) answered 500"))
    two.attempt("m#0", "client_error", 0.0)
    one.charge("team-a", "m", 100, 0.5)
    two.charge("team-a", "m", 50, 0.25)
    one.publish()
    two.publish()
    seen = [view(one, "m#0"), view(two, "m#0")]
    assert seen[0] == seen[1]
    shown = seen[0]
    assert shown["requests_recent"] == 6 and shown["errors_recent"] == 1
    assert shown["in_flight"] == 3
    assert shown["latency_ms"] == pytest.approx(150.0)
    assert shown["requests_per_minute"][-1] == 6 and len(shown["requests_per_minute"]) == MINUTES
    (error,) = shown["errors"]
    assert error["model"] == "m" and error["status"] == 502
    (cost,) = shown["costs"]
    assert cost == {"token": "team-a", "model": "m", "tokens": 150, "cost_usd": 0.75, "requests": 2}


def test_a_gone_worker_still_counts_but_has_nothing_in_flight(board):
    clock = Clock()
    gone = worker(board, "host:1", clock, {"m#0": 5})
    gone.attempt("m#0", "success", 0.1)
    gone.publish()
    reader = worker(board, "host:2", clock)
    clock.now += LIVE_SECONDS + 1
    shown = view(reader, "m#0")
    assert shown["in_flight"] == 0 and shown["requests_recent"] == 1
    # After an hour its minutes are out of the window; after a day it is dropped from the board.
    clock.now += KEEP_SECONDS
    assert view(reader, "m#0")["requests_per_minute"] == [0] * MINUTES
    assert len(board.read()) == 0


def test_minutes_roll_over_the_hour():
    clock = Clock()
    activity = worker(None, "host:1", clock)
    for minute in range(MINUTES + 5):
        activity.attempt("m#0", "retryable" if minute % 2 else "success", 0.01)
        clock.now += 60
    clock.now -= 60
    shown = view(activity, "m#0")
    assert sum(shown["requests_per_minute"]) == MINUTES
    assert shown["errors_per_minute"][-1] == (MINUTES + 4) % 2
    assert len(activity._minutes["m#0"]) <= MINUTES


@pytest.mark.parametrize(
    "junk",
    [b"", b"not json", b"[1, 2]", b'{"worker": "x", "time": "soon"}', json.dumps({}).encode()],
)
def test_a_broken_snapshot_is_skipped(tmp_path, junk):
    clock = Clock()
    board = FileBoard(tmp_path)
    (tmp_path / "ai-proxy-activity-999.json").write_bytes(junk)
    activity = worker(board, "host:1", clock)
    activity.attempt("m#0", "success", 0.1)
    try:
        shown = view(activity, "m#0")
    except (TypeError, ValueError, AttributeError) as err:  # pragma: no cover - the failure shown
        pytest.fail(f"a broken snapshot broke the page: {err!r}")
    assert shown["requests_recent"] == 1


def test_a_failing_board_leaves_this_worker_alone():
    class Broken:
        scope = "broken"

        def publish(self, worker, data):
            raise OSError("disk full")

        def read(self):
            raise redis.ConnectionError("down")

        def forget(self, worker):
            raise OSError

    activity = worker(Broken(), "host:1", Clock())
    activity.attempt("m#0", "success", 0.1)
    activity.publish()
    assert activity.errors_publishing == 1
    assert view(activity, "m#0")["requests_recent"] == 1


def test_error_messages_are_scrubbed_and_bounded():
    from app import redact

    redact.register(["sk-live-secret-123456"])
    activity = worker(None, "host:1", Clock())
    activity.attempt("m#0", "retryable", 0.1, "m", UpstreamError("key sk-live-secret-123456 " * 50))
    (error,) = view(activity, "m#0")["errors"]
    assert "sk-live-secret-123456" not in error["message"] and len(error["message"]) <= 300


def test_the_publisher_thread_publishes(tmp_path):
    from tests.servers import wait_until

    board = FileBoard(tmp_path)
    activity = Activity(board)
    activity.attempt("m#0", "success", 0.1)
    assert wait_until(lambda: board.read(), timeout=15)
    (snapshot,) = [json.loads(raw) for raw in board.read()]
    assert sum(v[0] for v in snapshot["minutes"]["m#0"].values()) == 1


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(["worker", "time", "minutes", "errors", "costs", "live", "in_flight"])


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(KEYS, JSON, max_size=6) | JSON)
def test_any_json_on_the_board_is_read_or_skipped(value):
    data = json.dumps(value).encode()
    snapshot = read_snapshot(data)
    if snapshot is not None:
        merged = Merged([snapshot], NOW)
        deployment_activity(merged, "m#0")
        merged.errors(), merged.costs()


def test_cost_starts_again_each_day():
    clock = Clock()
    activity = worker(None, "host:1", clock)
    activity.charge("team-a", "m", 10, 1.0)
    clock.now += 24 * 3600
    activity.charge("team-a", "m", 5, 0.5)
    (cost,) = view(activity, "m#0")["costs"]
    assert cost["tokens"] == 5 and cost["cost_usd"] == 0.5
