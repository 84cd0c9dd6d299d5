"""A worker replaced by a reload drains its streams: the master's reload count, and the drain."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app import worker
from app.worker import (
    DRAIN_MARGIN_SECONDS,
    MAX_DRAIN_SECONDS,
    ProxyWorker,
    forget_earlier_run,
    reloads,
    stamp_reload,
)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return tmp_path


def test_the_master_counts_its_reloads_and_forgets_them_when_it_starts(folder):
    assert reloads() == 0
    stamp_reload()
    stamp_reload()
    assert reloads() == 2
    (folder / worker.RELOAD_STAMP).write_text("garbage")
    assert reloads() == 0  # not a count: no reload is taken for one
    forget_earlier_run()
    assert reloads() == 0 and not (folder / worker.RELOAD_STAMP).exists()


def test_without_a_folder_nothing_is_counted(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    stamp_reload()
    assert reloads() == 0


class Config:
    def __init__(self, graceful: int) -> None:
        self.graceful_timeout = graceful

    def set(self, name: str, value: int) -> None:
        setattr(self, name, value)


def stopping(at_boot: int, stream_timeout: float) -> ProxyWorker:
    """A worker as gunicorn has it when its TERM comes (not started: only what handle_exit
    reads)."""
    proxy = ProxyWorker.__new__(ProxyWorker)
    proxy.alive = True
    proxy.cfg = Config(30)
    proxy.reloads_at_boot = at_boot
    routing = SimpleNamespace(stream_timeout_seconds=stream_timeout)
    state = SimpleNamespace(config=SimpleNamespace(routing=routing))
    proxy.wsgi = SimpleNamespace(extensions={"ai_proxy": state})
    proxy.method_queue = SimpleNamespace(defer=lambda fn: None)
    return proxy


@pytest.mark.parametrize(
    ("reloads_since", "stream_timeout", "drain"),
    [
        (0, 1800, 30),  # a stop: gunicorn's graceful timeout
        (1, 1800, MAX_DRAIN_SECONDS),  # a reload: the streams' time, bounded
        (1, 60, 60 + DRAIN_MARGIN_SECONDS),
        (1, 5, 5 + DRAIN_MARGIN_SECONDS),
    ],
)
def test_a_worker_drains_longer_only_when_a_reload_replaced_it(
    folder, reloads_since, stream_timeout, drain
):
    proxy = stopping(reloads(), stream_timeout)
    for _ in range(reloads_since):
        stamp_reload()
    proxy.handle_exit(15, None)
    assert proxy.cfg.graceful_timeout == drain
    assert proxy.alive is False


def test_a_worker_stopped_by_a_reload_before_its_app_is_loaded_still_stops(folder):
    """A HUP soon after another: the TERM can come while the worker is still importing its app.
    Its handler raised then, and the worker died with 'failed to boot', which stops the master."""
    proxy = stopping(reloads(), 1800)
    del proxy.wsgi
    stamp_reload()
    proxy.handle_exit(15, None)
    assert proxy.alive is False
    assert proxy.cfg.graceful_timeout == min(1800 + DRAIN_MARGIN_SECONDS, MAX_DRAIN_SECONDS)
