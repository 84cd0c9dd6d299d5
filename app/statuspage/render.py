"""What the status page shows, made from the /admin/status report: words, numbers, sparklines.

The page's script (static/status.js) writes the same words from the same report when it
refreshes; the two are kept alike by tests/test_status_page_browser.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..redact import scrub

STATE_WORDS = {
    "healthy": "healthy",
    "cooling_down": "cooling down",
    "failing": "failing",
    "probing": "probing",
}
SPARK_WIDTH = 120
SPARK_HEIGHT = 24


def clock(epoch: float | None) -> str:
    """A time as the page writes it: `13:05:09 UTC`."""
    if epoch is None:
        return ""
    try:
        return time.strftime("%H:%M:%S UTC", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return ""  # no time a clock can show (read from a shared board, say)


def number(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "\u2014"
    if digits == 0:
        return f"{round(value):,}"
    return f"{value:,.{digits}f}"


def spark_path(values: list[int], peak: int) -> str:
    """An SVG path of one bar per minute (none for an empty minute), scaled to `peak` (requests
    and errors share it, so a minute's errors stand inside its requests)."""
    step = SPARK_WIDTH / max(1, len(values))
    top = max(1, peak)
    bars = []
    for i, value in enumerate(values):
        if value > 0:
            height = max(1.5, value / top * SPARK_HEIGHT)
            bars.append(f"M{(i + 0.5) * step:.1f},{SPARK_HEIGHT}V{SPARK_HEIGHT - height:.1f}")
    return " ".join(bars)


@dataclass
class Window:
    """One quota window of an owner: used against its limit."""

    name: str
    used: float
    limit: float
    money: bool

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    @property
    def text(self) -> str:
        if self.money:
            return f"${self.used:,.2f} of ${self.limit:,.2f}"
        return f"{number(self.used)} of {number(self.limit)}"


@dataclass
class Deployment:
    key: str
    name: str
    provider: str
    state: str
    words: str
    until: str
    failures: int
    latency: str
    in_flight: int
    requests: int
    errors: int
    requests_path: str
    errors_path: str
    windows: list[Window] = field(default_factory=list)


def windows(quota: dict) -> list[Window]:
    shown = []
    for name, window in quota.items():
        if window.get("remaining") is None:
            continue
        used = window["limit"] - window["remaining"]
        shown.append(Window(name, used, window["limit"], name.startswith("budget")))
    return shown


def deployment(entry: dict) -> Deployment:
    activity = entry["activity"]
    requests, errors = activity["requests_per_minute"], activity["errors_per_minute"]
    peak = max([*requests, *errors, 1])
    return Deployment(
        key=entry["key"],
        name=entry["name"],
        provider=entry["provider"],
        state=entry["state"],
        words=STATE_WORDS.get(entry["state"], entry["state"]),
        until=clock(entry["cooling_down_until"]),
        failures=entry["consecutive_failures"],
        latency=number(activity["latency_ms"], 1)
        + (" ms" if activity["latency_ms"] is not None else ""),
        in_flight=activity["in_flight"],
        requests=activity["requests_recent"],
        errors=activity["errors_recent"],
        requests_path=spark_path(requests, peak),
        errors_path=spark_path(errors, peak),
        windows=windows(entry["quota"]),
    )


def page(report: dict) -> dict:
    """Everything the template shows."""
    activity = report["activity"]
    cache = activity["cache"]
    if not cache["enabled"]:
        cache_text = "cache off"
    elif cache["hit_rate"] is None:
        cache_text = "no lookups yet"
    else:
        cache_text = f"{cache['hit_rate'] * 100:.1f}% hits"
    return {
        "deployments": [deployment(d) for d in report["deployments"]],
        "tokens": [{"name": t["name"], "windows": windows(t["quota"])} for t in report["tokens"]],
        "costs": activity["costs_today"],
        "errors": [
            {
                "time": clock(e["time"]),
                "model": e.get("model") or e.get("deployment", ""),
                "status": e.get("status") or "",
                "message": scrub(e.get("message", "")),
            }
            for e in activity["last_errors"]
        ],
        "cache": cache,
        "cache_text": cache_text,
        "in_flight": activity["requests_in_flight"],
        "workers": activity["workers"],
        "scope": activity["scope"],
        "recent_minutes": activity["recent_minutes"],
        "generated": clock(activity["generated_at"]),
        "storage_ok": report["rate_limit_storage"]["ok"],
        "spark_width": SPARK_WIDTH,
        "spark_height": SPARK_HEIGHT,
    }
