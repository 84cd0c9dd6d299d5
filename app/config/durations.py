"""Durations as the Go ai-proxy writes them (`1m30s`, `300ms`) or as plain seconds."""

from __future__ import annotations

import re

# A plain number of seconds, or Go's time.ParseDuration form: `300ms`, `1m30s`, `-1.5h`, `2h45m`.
_SECONDS_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_GO_DURATION_PART_RE = re.compile(r"(\d*)(?:\.(\d*))?\s*(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# Go's time.Duration is an int64 of nanoseconds: longer durations do not parse there either.
MAX_DURATION_SECONDS = (2**63 - 1) / 1e9


def parse_go_duration(value: object) -> float:
    """Signed seconds from a Go duration (`1m30s`, `300us`, `-1.5h`, `0`) or plain seconds.

    Go's `time.ParseDuration` grammar: an optional sign, then one or more decimal numbers each
    with a unit (ns, us/µs, ms, s, m, h); `0` alone needs no unit. A plain number (`2`, `0.5`)
    is taken as seconds, as this proxy always has. Raises ValueError for anything else.
    """
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if _SECONDS_RE.match(text):
            seconds = float(text)
        else:
            seconds = _go_duration(text)
    if seconds != seconds or abs(seconds) > MAX_DURATION_SECONDS:  # NaN or past int64 ns
        raise ValueError(f"not a duration: {value!r} (out of range)")
    return seconds


def _go_duration(text: str) -> float:
    sign = 1.0
    rest = text
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    total = 0.0
    position = 0
    while position < len(rest):
        match = _GO_DURATION_PART_RE.match(rest, position)
        # A number needs digits before or after its point (`.5s`, `5.s`), as in Go.
        if not match or not (match.group(1) or match.group(2)):
            raise ValueError(
                f"not a duration: {text!r} (use 500ms, 1m30s, 2h45m or a number of seconds)"
            )
        whole, fraction, unit = match.group(1) or "0", match.group(2) or "", match.group(3)
        total += float(f"{whole}.{fraction or '0'}") * _GO_UNITS[unit]
        position = match.end()
    if not rest:
        raise ValueError(f"not a duration: {text!r}")
    return sign * total


def parse_duration(value: object) -> float:
    """Seconds (not negative) from `500ms`, `2s`, `1m30s`, `1h` or a plain number of seconds."""
    seconds = parse_go_duration(value)
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """`1.5s`, `250ms`, `0s`: a duration as a warning line shows it."""
    if seconds and abs(seconds) < 1:
        return f"{seconds * 1000:g}ms"
    return f"{seconds:g}s"
