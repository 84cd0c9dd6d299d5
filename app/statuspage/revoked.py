"""Signed-out status page sessions, remembered until their cookies would have expired anyway.

A session cookie is signed, not stored: without this list a copy of it would stay valid for its
whole lifetime after sign-out. Sign-out records the session's random id where every worker looks:
in Redis when the rate-limit storage is Redis (every worker of every host, with the entry's own
expiry), else as a file in the Prometheus multiprocess directory (every worker of this host), as
the page's shared numbers are kept (app/activity.py); each worker also remembers its own.
A storage that fails is logged: the worker's own memory still answers for its sign-outs.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..activity import FileBoard, RedisBoard
from ..cooldown import LogThrottle

logger = logging.getLogger(__name__)

REDIS_PREFIX = "aiproxy:admin-session-revoked:"
FILE_PREFIX = "ai-proxy-revoked-"
# Session ids are `secrets.token_urlsafe` output: anything else is no id (and never a path).
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_REMEMBERED = 10_000

Board = FileBoard | RedisBoard | None


def _now() -> float:
    return time.time()


class Revocations:
    """Signed-out session ids: this process's own (kept across config reloads), and the shared
    board's, which every worker reads."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        # time.time looked up at each call (a default argument would keep whatever function
        # time.time was when this module was first imported: a test's frozen clock, say).
        self.clock = clock or _now
        self._lock = threading.Lock()
        self._local: dict[str, float] = {}  # session id -> until when it is remembered
        self._write_failed = LogThrottle()
        self._read_failed = LogThrottle()

    def revoke(self, board: Board, session_id: str, seconds: float) -> None:
        """Remember a signed-out session for `seconds` (its cookie's longest remaining life)."""
        if not SESSION_ID.fullmatch(session_id):
            return
        until = self.clock() + seconds
        with self._lock:
            self._forget_expired()
            if len(self._local) >= MAX_REMEMBERED:
                self._local.pop(next(iter(self._local)))
            self._local[session_id] = until
        try:
            if isinstance(board, RedisBoard):
                board.client.set(REDIS_PREFIX + session_id, b"1", ex=max(1, int(seconds) + 1))
            elif isinstance(board, FileBoard):
                self._write_file(board.directory, session_id, until)
        except Exception as err:  # noqa: BLE001 - fail-open point: this worker still knows.
            if self._write_failed.ready():
                logger.warning("sign-out not shared: the storage failed (%s)", type(err).__name__)

    def is_revoked(self, board: Board, session_id: str) -> bool:
        """Whether the session was signed out (by any worker sharing the board)."""
        if not SESSION_ID.fullmatch(session_id):
            return True
        with self._lock:
            until = self._local.get(session_id)
        if until is not None and until > self.clock():
            return True
        try:
            if isinstance(board, RedisBoard):
                return bool(board.client.exists(REDIS_PREFIX + session_id))
            if isinstance(board, FileBoard):
                return self._read_file(board.directory, session_id)
        except Exception as err:  # noqa: BLE001 - fail-open point: the page works in an outage.
            if self._read_failed.ready():
                logger.warning(
                    "other workers' sign-outs not checked: the storage failed (%s)",
                    type(err).__name__,
                )
        return False

    def _forget_expired(self) -> None:
        now = self.clock()
        for session_id in [s for s, until in self._local.items() if until <= now]:
            del self._local[session_id]

    def _write_file(self, directory: Path, session_id: str, until: float) -> None:
        now = self.clock()
        for path in directory.glob(f"{FILE_PREFIX}*"):
            try:
                if float(path.read_text() or 0) <= now:
                    path.unlink(missing_ok=True)
            except (OSError, ValueError):
                continue
        target = directory / f"{FILE_PREFIX}{session_id}"
        # Written whole, then renamed: a reader never sees half an expiry.
        temporary = directory / f".tmp-{FILE_PREFIX}{session_id}"
        temporary.write_text(repr(until))
        temporary.replace(target)

    def _read_file(self, directory: Path, session_id: str) -> bool:
        try:
            until = float((directory / f"{FILE_PREFIX}{session_id}").read_text() or 0)
        except FileNotFoundError:
            return False
        return until > self.clock()


# One per process: a config reload builds a new app state, and must not forget sign-outs.
REVOKED = Revocations()
