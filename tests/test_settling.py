"""The settler: queued settles reach the storage in order, in batches, retried once."""

from __future__ import annotations

import threading
import time

from app import settling
from app.settling import Settler
from tests.servers import wait_until


def test_a_wait_sees_every_settle_queued_before_it():
    sent: list[list] = []
    release = threading.Event()

    def apply(batch):
        release.wait(5)
        sent.append(list(batch))

    settler = Settler(apply, lambda err, final: None)
    settler.put([1])
    settler.put([2, 3])
    assert not settler.wait(timeout=0.05)  # the storage has not answered yet
    release.set()
    assert settler.wait()
    assert [change for batch in sent for change in batch] == [1, 2, 3]
    assert len(sent) <= 2  # queued while one was in flight: sent together


def test_a_failed_batch_is_retried_once_then_reported():
    attempts, reports = [], []

    def apply(batch):
        attempts.append(batch)
        raise ConnectionError("down")

    settler = Settler(apply, lambda err, final: reports.append(final))
    settler.put(["a"])
    assert settler.wait()
    assert len(attempts) == 2 and reports == [False, True]
    # The settler lives on for the next batch.
    settler.put(["b"])
    wait_until(lambda: len(attempts) == 4)


def test_a_batch_the_storage_may_have_applied_is_not_sent_again():
    """A failure the settler is told not to retry (Redis timed out: it may run the batch yet)
    is reported as final at once; a retryable one still gets its second try."""
    attempts, reports = [], []

    def apply(batch):
        attempts.append(batch)
        raise TimeoutError("slow") if batch == ["maybe"] else ConnectionError("down")

    settler = Settler(
        apply,
        lambda err, final: reports.append(final),
        lambda err: not isinstance(err, TimeoutError),
    )
    settler.put(["maybe"])
    assert settler.wait()
    assert attempts == [["maybe"]] and reports == [True]
    settler.put(["gone"])
    assert settler.wait()
    assert attempts[1:] == [["gone"], ["gone"]] and reports[1:] == [False, True]


def test_a_retry_that_succeeds_counts_no_failure():
    attempts, reports = [], []

    def apply(batch):
        attempts.append(batch)
        if len(attempts) == 1:
            raise ConnectionError("blip")

    settler = Settler(apply, lambda err, final: reports.append(final))
    settler.put(["a"])
    assert settler.wait()
    assert reports == [False]


def test_nothing_to_wait_for_returns_at_once():
    settler = Settler(lambda batch: None, lambda err, final: None)
    assert settler.wait(timeout=0)
    settler.put([])
    assert settler.wait(timeout=0)


def test_a_reservation_carries_what_is_queued(monkeypatch):
    monkeypatch.setattr(settling, "LINGER_SECONDS", 5.0)  # the thread waits for a carrier
    sent: list[list] = []
    settler = Settler(lambda batch: sent.append(list(batch)), lambda err, final: None)
    settler.put([1])
    settler.put([2])
    taken = settler.take()
    assert taken is not None
    batch, upto = taken
    assert batch == [1, 2] and upto == 2
    settler.carried(batch, upto, ok=True)
    assert settler.wait(timeout=0)
    assert not sent  # carried, so the thread had nothing to send


def test_what_a_failed_reservation_carried_is_sent_by_the_thread():
    sent: list[list] = []
    settler = Settler(lambda batch: sent.append(list(batch)), lambda err, final: None)
    settler.put([1])
    batch, upto = settler.take()
    settler.carried(batch, upto, ok=False)
    assert settler.wait()
    assert sent == [[1]]


def test_a_settle_queued_while_the_thread_lingers_is_sent_without_a_notice(monkeypatch):
    """The thread is not woken for every settle: one queued while it lingers (after a
    reservation carried the earlier ones) is sent by its own clock, and so is a failed carry."""
    monkeypatch.setattr(settling, "LINGER_SECONDS", 0.2)
    sent: list[list] = []
    settler = Settler(lambda batch: sent.append(list(batch)), lambda err, final: None)
    settler.put([1])
    assert wait_until(lambda: settler._thread is not None and not settler._idle, timeout=5)
    batch, upto = settler.take()
    settler.carried(batch, upto, ok=True)
    settler.put([2])  # the thread is waiting on its clock: no notice
    assert settler.wait(timeout=5)
    assert sent == [[2]]
    settler.put([3])
    batch, upto = settler.take()
    settler.carried(batch, upto, ok=False)  # back to the queue, sent by the thread
    assert settler.wait(timeout=5)
    assert sent == [[2], [3]]


class CountingCondition(threading.Condition):
    """A condition that counts the waits that return (each one a wake-up of the waiting thread)."""

    wakes = 0

    def wait(self, timeout=None):
        try:
            return super().wait(timeout)
        finally:
            self.wakes += 1


def test_the_thread_wakes_by_its_clock_not_per_settle():
    """Steady traffic: every settle is carried by the next reservation about a millisecond later.
    The thread wakes every TICK_SECONDS, not twice per settle (at the notice and at its linger's
    end). (On a busy machine a settle may wait past its linger and be sent by the thread.)"""
    sent: list[list] = []
    settler = Settler(lambda batch: sent.append(list(batch)), lambda err, final: None)
    settler._work = CountingCondition(settler._lock)
    cycles, started = 300, time.monotonic()
    for i in range(cycles):
        settler.put([i])
        time.sleep(0.001)
        batch, upto = settler.take()
        settler.carried(batch, upto, ok=True)
    elapsed = time.monotonic() - started
    assert settler._work.wakes <= elapsed / settling.TICK_SECONDS + 2 * len(sent) + 5
    assert settler._work.wakes < cycles  # (twice per settle before)


def test_a_settle_nobody_carries_is_sent_within_linger_and_a_tick():
    sent: list[float] = []
    settler = Settler(lambda batch: sent.append(time.monotonic()), lambda err, final: None)
    for _ in range(3):  # the first after idle, then two while the thread ticks
        queued = time.monotonic()
        settler.put([1])
        assert settler.wait(timeout=5)
        assert sent[-1] - queued >= settling.LINGER_SECONDS
        # (with room for a busy machine's scheduling)
        assert sent[-1] - queued < settling.LINGER_SECONDS + settling.TICK_SECONDS + 0.25
    assert len(sent) == 3
