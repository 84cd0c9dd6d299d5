"""The access log's direct line (app.accesslog) against the logging module's own path: the same
JSON line, the same scrubbing, and the logging module's path whenever the set-up is not the
proxy's own."""

from __future__ import annotations

import contextlib
import io
import json
import logging

import pytest
from _pytest.logging import LogCaptureHandler

from app import redact
from app.accesslog import _direct_handler, log_access
from app.logs import JsonFormatter, configure_logging

SECRET = "sk-live-0123456789abcdefABCDEF0123456789"
MSG = "%s %s %s %.1fms"


@pytest.fixture
def access():
    """The access logger as configure_logging sets it, writing to a buffer; restored after."""
    root = logging.getLogger()
    logger = logging.getLogger("ai_proxy.access")
    saved = (list(root.handlers), root.level, list(logger.handlers), logger.propagate)
    saved_level, saved_filters = logger.level, list(logger.filters)
    configure_logging("INFO", "json")
    redact.register([SECRET])
    buffer = io.StringIO()
    logger.handlers[0].setStream(buffer)
    yield logger, buffer
    for target, handlers in ((root, saved[0]), (logger, saved[2])):
        for handler in list(target.handlers):
            target.removeHandler(handler)
        for handler in handlers:
            target.addHandler(handler)
    root.setLevel(saved[1])
    logger.propagate = saved[3]
    logger.setLevel(saved_level)
    logger.filters[:] = saved_filters


FIELDS = [
    {"request_id": "abc", "method": "POST", "path": "/v1/chat/completions", "status": 200},
    {
        "request_id": "r-1",
        "method": "GET",
        "path": f"/v1/models?key={SECRET}",
        "status": 401,
        "token": "team-a",
        "model_requested": SECRET,
        "latency_ms": 1.25,
        "stream": False,
        "cost_usd": 0.000123,
        "prompt_tokens": 12,
    },
    {
        "request_id": SECRET[:20],
        "method": "POST",
        "path": "/v1/messages",
        "status": 200,
        "nested": {"a": [SECRET, 1, None, {"b": f"Bearer {SECRET}"}]},
        "object": ValueError(f"bad {SECRET}"),
        "unicode": "héllo ✓ \u2028",
        "_private": "left out",
    },
]


def slow_line(logger: logging.Logger, level: int, args: tuple, fields: dict) -> dict:
    """What the logging module's own path writes."""
    buffer = logger.handlers[0].stream
    start = buffer.tell()
    logger.log(level, MSG, *args, extra=fields)
    return json.loads(buffer.getvalue()[start:])


@contextlib.contextmanager
def own_handler_only(logger: logging.Logger):
    """pytest's log capture adds its handlers to the logger while a test runs: they are taken
    off meanwhile, so that the direct line (not the logging module's path) is what is tested."""
    extra = [h for h in logger.handlers if isinstance(h, LogCaptureHandler)]
    for handler in extra:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in extra:
            logger.addHandler(handler)


def fast_line(logger: logging.Logger, level: int, args: tuple, fields: dict) -> dict:
    buffer = logger.handlers[0].stream
    start = buffer.tell()
    with own_handler_only(logger):
        # (WARNING and above always take the logging module's path.)
        assert (_direct_handler(logger, level) is not None) == (level <= logging.INFO)
        log_access(logger, level, MSG, args, fields)
    written = buffer.getvalue()[start:]
    assert written.endswith("\n") and written.count("\n") == 1
    return json.loads(written)


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_direct_line_is_the_logging_line(access, fields, level):
    logger, _ = access
    args = (fields["method"], fields["path"], fields["status"], 1.234)
    slow, fast = slow_line(logger, level, args, fields), fast_line(logger, level, args, fields)
    slow.pop("ts"), fast.pop("ts")
    assert fast == slow
    assert list(fast) == list(slow)  # the same order of keys
    assert SECRET not in json.dumps(fast)


def test_debug_lines_follow_the_level(access):
    logger, buffer = access
    logger.setLevel(logging.DEBUG)
    fields = FIELDS[0]
    args = ("GET", "/healthz", 200, 0.5)
    assert fast_line(logger, logging.DEBUG, args, fields)["level"] == "DEBUG"


@pytest.mark.parametrize("created", [1700000000.0, 1700000000.9999, 1700000000.0005, 0.999])
def test_timestamp_matches_the_record_time(created):
    formatter = JsonFormatter()
    record = logging.LogRecord("x", logging.INFO, "", 0, "m", None, None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    assert formatter.timestamp(created) == formatter._timestamp(record)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("change", ["extra handler", "logger filter", "propagate", "text format"])
def test_any_other_set_up_gets_the_logging_module_path(access, change):
    logger, buffer = access
    capture = Capture()
    if change == "extra handler":
        logger.addHandler(capture)
    elif change == "logger filter":
        logger.addFilter(lambda record: capture.records.append(record) or True)
    elif change == "propagate":
        logger.propagate = True
        logging.getLogger().addHandler(capture)
    else:
        logger.handlers[0].setFormatter(logging.Formatter("%(message)s"))
    fields = FIELDS[1]
    log_access(logger, logging.INFO, MSG, ("GET", "/x", 200, 1.0), fields)
    if change == "text format":
        assert buffer.getvalue() == "GET /x 200 1.0ms\n"
    else:
        assert len(capture.records) == 1
        assert capture.records[0].model_requested != SECRET  # scrubbed as ever
    if change == "propagate":
        logging.getLogger().removeHandler(capture)


def test_a_field_named_like_a_record_attribute_is_refused_as_before(access):
    logger, _ = access
    with pytest.raises(KeyError):
        log_access(logger, logging.INFO, MSG, ("GET", "/x", 200, 1.0), {"msg": "x"})


def test_a_failing_stream_is_reported_not_raised(access, capsys):
    logger, _ = access

    class Broken(io.StringIO):
        def write(self, text):
            raise OSError("disk full")

    logger.handlers[0].setStream(Broken())
    log_access(logger, logging.INFO, MSG, ("GET", "/x", 200, 1.0), FIELDS[0])
    assert "disk full" in capsys.readouterr().err


def test_lines_leave_nothing_per_request_in_the_redactor_cache(access):
    """Each line's text is new (it holds the latency): only its repeating arguments are
    remembered by the redactor, so a thousand requests add a handful of cache entries, not a
    thousand (strings that, left behind by a burst, pinned Python's memory arenas)."""
    logger, _ = access
    cache = redact.REDACTOR._index.cache
    fast_line(logger, logging.INFO, ("POST", "/v1/chat/completions", 200, 0.5), FIELDS[0])
    before = len(cache)
    for i in range(1000):
        line = fast_line(
            logger, logging.INFO, ("POST", "/v1/chat/completions", 200, 1 + i / 7), FIELDS[0]
        )
    assert line["msg"] == f"POST /v1/chat/completions 200 {1 + 999 / 7:.1f}ms"
    assert len(cache) - before <= 2


@pytest.mark.parametrize(
    "arg",
    [
        f"/v1/models?key={SECRET}",
        f"Bearer {SECRET}",
        SECRET[4:16],  # a run of the secret is the secret
        ValueError(f"bad {SECRET}"),
        b"sk-proj-" + b"A" * 40,  # shaped like a key
    ],
)
def test_every_argument_of_the_line_is_scrubbed(access, arg):
    logger, _ = access
    line = fast_line(logger, logging.INFO, ("POST", arg, 200, 1.0), FIELDS[0])
    assert SECRET[4:16] not in line["msg"] and "A" * 40 not in line["msg"]
    assert line["msg"].startswith("POST ") and line["msg"].endswith(" 200 1.0ms")
