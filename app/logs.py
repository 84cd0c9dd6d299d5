"""Logging set-up: one JSON object per line (LOG_FORMAT=json) or plain text, gunicorn's included.

Every handler set up here scrubs secrets from the records it writes (app.redact).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from gunicorn.glogging import Logger as GunicornLogger

from .config import runtime_from_env
from .redact import install_filter, install_on_loggers

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields of a LogRecord that are not `extra=` data.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# gunicorn access-log atoms worth keeping, under readable names.
_ACCESS_FIELDS = {
    "h": "remote_addr",
    "m": "method",
    "U": "path",
    "s": "status",
    "B": "bytes",
    "D": "duration_us",
    "a": "user_agent",
    "{x-request-id}o": "request_id",
}

# json.dumps(entry, default=str) would build a new encoder for every record.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and any `extra=` fields."""

    # The formatted second of the last record (the same for hundreds of records in a row).
    _second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        return self.timestamp(record.created)

    def timestamp(self, created: float) -> str:
        """A record's `ts` from its `created` time (milliseconds as LogRecord.msecs has them)."""
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
            self._second = cached
        return f"{cached[1]}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "logger": record.name,
        }
        if record.name == "gunicorn.access" and isinstance(record.args, dict):
            entry["msg"] = "access"
            for atom, name in _ACCESS_FIELDS.items():
                value = record.args.get(atom)
                if value not in (None, "-"):
                    entry[name] = value
        else:
            entry["msg"] = record.getMessage()
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        return _ENCODER.encode(entry)


def make_formatter(fmt: str) -> logging.Formatter:
    return JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """The proxy's log records to stderr, its one line per request to stdout, in one format."""
    # No format of the proxy shows a record's source line or process name: finding the caller's
    # frame and the multiprocessing name for every record (the access log writes one a request)
    # is work for nothing (the logging module's own advice for speed).
    logging._srcfile = None
    logging.logMultiprocessing = False
    formatter = make_formatter(fmt)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    install_filter(handler)
    root.addHandler(handler)
    root.setLevel(level)
    access = logging.getLogger("ai_proxy.access")
    for old in list(access.handlers):
        access.removeHandler(old)
    access_handler = logging.StreamHandler(sys.stdout)
    access_handler.setFormatter(formatter)
    install_filter(access_handler, access)
    access.addHandler(access_handler)
    access.propagate = False
    # The request lines are the access log: LOG_LEVEL=WARNING quiets the proxy, not them.
    # (DEBUG also shows the probe and scrape requests.)
    access.setLevel(logging.DEBUG if level == "DEBUG" else logging.INFO)
    install_on_loggers(__name__.rpartition(".")[0])


class ProxyGunicornLogger(GunicornLogger):
    """gunicorn's logger with the proxy's format on its error and access logs."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        # Invalid values are reported by the start-up check; logging falls back to defaults.
        runtime = runtime_from_env(os.environ, [])
        configure_logging(runtime.log_level, runtime.log_format)
        formatter = make_formatter(runtime.log_format)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(formatter)
                install_filter(handler)
