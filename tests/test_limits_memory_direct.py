"""The memory quota batch working on limits' counters directly (MemoryBatch.direct) against the
same batch through limits' own get/incr/decr: the same answers and the same counters, step by
step, over random sequences of reservations, settles and passing time."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from limits.storage import MemoryStorage

from app.hooks.limits import SweptMemoryStorage
from app.hooks.limits_batch import Change, Layout, Window
from app.hooks.limits_memory import MemoryBatch, window_keys


class ThroughLimits(SweptMemoryStorage):
    """A subclass: the batch goes through limits' methods for it."""


WINDOWS = [
    Window("fixed/requests", Layout.FIXED, 5, 60, client=True),
    Window("sliding/tokens", Layout.SLIDING, 300, 60, client=True),
    Window("model/requests", Layout.MOVING, 4, 10),
    Window("model/tokens", Layout.SLIDING, 200, 1),
]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.25

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


def test_which_storages_are_worked_on_directly():
    assert MemoryBatch(SweptMemoryStorage()).direct
    assert MemoryBatch(MemoryStorage()).direct
    assert not MemoryBatch(ThroughLimits()).direct


@given(
    st.floats(0, 2e9, allow_nan=False),
    st.sampled_from([1, 7, 60, 3600, 86400]),
    st.text(max_size=5),
)
def test_window_keys_are_limits_keys(now, expiry, key):
    assert window_keys(key, expiry, now) == MemoryStorage.sliding_window_keys(key, expiry, now)


STEP = st.one_of(
    st.tuples(st.just("reserve"), st.lists(st.integers(0, 120), min_size=4, max_size=4)),
    st.tuples(st.just("settle"), st.integers(-150, 150)),
    st.tuples(st.just("wait"), st.floats(0, 90, allow_nan=False)),
    st.tuples(st.just("read"), st.just(0)),
)


def state(storage: MemoryStorage) -> tuple[dict, dict]:
    return dict(+storage.storage + storage.storage), dict(storage.expirations)


def step_batches(batches, marks: list[list], kind: str, arg, windows, clock) -> list:
    """One step (see STEP) on each batch over `windows` (two required, two in one choice):
    what each answered, in order. `marks` keeps each batch's last reservation's marks."""
    answers = []
    for i, batch in enumerate(batches):
        if kind == "reserve":
            required = [(windows[0], 1), (windows[1], arg[0])]
            done = batch.reserve(required, [[(windows[2], 1), (windows[3], arg[1])]])
            marks[i] = list(done.marks)
            answers.append(done)
        elif kind == "settle":
            batch.adjust(
                [
                    Change(window, arg, mark)
                    for window, mark in zip(windows, marks[i], strict=False)
                    if mark is not None
                ]
            )
        elif kind == "read":
            answers.append(batch.read(windows))
    if kind == "wait":
        clock.now += arg
    return answers


@settings(max_examples=60, deadline=None)
@given(st.lists(STEP, max_size=25))
def test_direct_batch_answers_as_limits_methods_do(steps):
    clock = Clock()
    original = time.time
    time.time = clock
    try:
        direct, plain = MemoryBatch(SweptMemoryStorage()), MemoryBatch(ThroughLimits())
        marks: list[list] = [[], []]
        for kind, arg in steps:
            answers = step_batches((direct, plain), marks, kind, arg, WINDOWS, clock)
            if answers:
                assert answers[0] == answers[1]
            assert state(direct.storage) == state(plain.storage)
    finally:
        time.time = original
