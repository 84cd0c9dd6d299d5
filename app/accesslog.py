"""The access log's line per request, written without the logging module's per-record work.

A request's line through `Logger.log` builds a `LogRecord` (a dozen attributes, a level-name
look-up, the `extra=` fields copied in), runs the scrub filter on the logger and again on the
handler, takes the handler's lock and calls the formatter, which walks the record's attributes
back out: about a tenth of a cache hit's CPU. When the access logger is set up exactly as
`app.logs.configure_logging` sets it (one plain `StreamHandler`, the JSON formatter, the scrub
filter and nothing else, not propagating), `log_access` writes the same JSON line itself: the
same fields in the same order, scrubbed by the same redactor, under the handler's lock. Any
other set-up (a test's capturing handler, a host app's handlers, text format) takes the
logging module's own path, so what such a handler receives is unchanged.
"""

from __future__ import annotations

import logging
import time

from .logs import _ENCODER, _STANDARD, JsonFormatter
from .redact import ID_FIELDS, SCRUB_FILTER

_LEVEL_NAMES = {logging.DEBUG: "DEBUG", logging.INFO: "INFO"}
# Arguments of the line's text that cannot hold a secret (anything else is scrubbed as text).
_NUMBERS = frozenset({int, float, bool})


def _direct_handler(logger: logging.Logger, level: int) -> logging.StreamHandler | None:
    """The handler a line may be written to directly, or None when the set-up is not the
    proxy's own (then only the logging module's path gives the same result)."""
    if logger.propagate or logger.disabled or len(logger.handlers) != 1:
        return None
    if logger.filters and logger.filters != [SCRUB_FILTER]:
        return None
    handler = logger.handlers[0]
    if (
        type(handler) is not logging.StreamHandler
        or type(handler.formatter) is not JsonFormatter
        or handler.filters != [SCRUB_FILTER]
        or level < handler.level
        or level not in _LEVEL_NAMES
    ):
        return None
    return handler


def log_access(logger: logging.Logger, level: int, msg: str, args: tuple, fields: dict) -> None:
    """`logger.log(level, msg, *args, extra=fields)` for an enabled level, written directly
    when the logger is set up as the proxy sets it (see the module docstring)."""
    handler = _direct_handler(logger, level)
    if handler is None or any(key in _STANDARD for key in fields):
        # (A field named like a record attribute: logging refuses it, as it always has.)
        logger.log(level, msg, *args, extra=fields)
        return
    created = time.time()
    redactor = SCRUB_FILTER.redactor
    formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
    # The line's text is new every time (it holds the latency): its string arguments (method,
    # path), which repeat, are scrubbed instead, each found in the redactor's cache after the
    # first. Scrubbing the whole text would cache a string per request, which the cache holds
    # until it is full: CPU spent for no hit, and after a burst of streams those strings, left
    # all over Python's small-object arenas, kept the arenas from being given back.
    scrub = redactor.scrub
    entry = {
        "ts": formatter.timestamp(created),
        "level": _LEVEL_NAMES[level],
        "logger": logger.name,
        "msg": msg % tuple(arg if type(arg) in _NUMBERS else scrub(str(arg)) for arg in args),
    }
    scrub_value = redactor.scrub_value
    for key, value in fields.items():
        if not key.startswith("_"):
            entry[key] = scrub_value(value, shapes=key not in ID_FIELDS)
    line = _ENCODER.encode(entry) + handler.terminator
    handler.acquire()
    try:
        stream = handler.stream
        stream.write(line)
        # StreamHandler.flush, without taking the lock held here a second time.
        if stream and hasattr(stream, "flush"):
            stream.flush()
    except RecursionError:
        raise
    except Exception:  # noqa: BLE001 - as StreamHandler.emit: logging never fails a request.
        record = logger.makeRecord(logger.name, level, "", 0, msg, args, None, extra=fields)
        handler.handleError(record)
    finally:
        handler.release()
