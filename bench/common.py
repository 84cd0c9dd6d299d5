"""What every part of the benchmark shares: its paths, the client's token and model, the chat
request it sends, the progress line it logs and how figures are written in the report."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS_DIR = BENCH / "results"  # git-ignored: logs, configs, quick-run reports
DEFAULT_OUTPUT = ROOT / "docs" / "benchmarks" / "results.md"
CHAT_PATH = "/v1/chat/completions"
CLIENT_TOKEN = "sk-bench-client-token-0123456789"
UPSTREAM_KEY = "sk-bench-upstream-key-0123456789"
MODEL = "bench-model"
# Limits no benchmark reaches, so quotas are checked and counted but never refuse.
QUOTA = 10**9
TARGETS = ("direct", "bare", "proxy", "proxy-redis", "portkey", "litellm")
# What a run measures unless told: the peers join with --peers (bench/peers.py).
DEFAULT_TARGETS = TARGETS[:4]
PEER_TARGETS = ("portkey", "litellm")
PARTS = ("load", "chunks", "open", "soak", "quotas")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def request_body(stream: bool) -> bytes:
    """The chat completion every load and chunk measurement sends (streamed with usage)."""
    body: dict = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello to the benchmark."},
        ],
        "max_tokens": 64,
        "temperature": 0.7,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


def ms(value: float | None, digits: int = 2) -> str:
    """A report cell for milliseconds; a dash for a figure that was not measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def pct(value: float | None) -> str:
    """A report cell for percent of a core; a dash for a figure that was not measured."""
    return "–" if value is None else f"{value:.0f}%"
