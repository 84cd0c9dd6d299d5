"""Load generation and measurement for bench/run.py.

* `run_wrk`: non-streaming throughput and latency with wrk (a Lua script sets the POST body and
  the Authorization header; its `done()` prints the numbers as one JSON line).
* `run_python_load`: the same numbers from an asyncio keep-alive load generator, for machines
  without wrk (it is slower than wrk and competes harder for the CPU: compare targets, not runs).
* `measure_streams`: streamed chat completions, timing the first byte and, for every chunk, the
  client's receive time minus the upstream's send time that the fake upstream embeds in it.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

TS_RE = re.compile(r"<ts:(\d+\.\d+)>")
WRK_MARK = "WRKJSON "


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (pct 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class LoadResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    non_2xx: int
    loadgen_cpu_s: float = 0.0
    tool: str = "wrk"


# ---------------------------------------------------------------------------------------------
# wrk


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = %(body)s
wrk.headers["Content-Type"] = "application/json"
%(auth)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"requests": %%d, "duration_us": %%d, "p50_us": %%.1f, "p90_us": %%.1f, ' ..
    '"p99_us": %%.1f, "max_us": %%.1f, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"status": %%d, "timeout": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def header_lines(token: str | None, headers: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """The request's own headers: the client token as a Bearer one, then any a target needs
    (a peer's routing headers; an `Authorization` among them replaces the token's)."""
    extra = dict(headers or {})
    lines = []
    if token and "Authorization" not in extra:
        lines.append(("Authorization", f"Bearer {token}"))
    return lines + list(extra.items())


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version() -> str:
    try:
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "wrk"
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


def run_wrk(
    url: str,
    body: bytes,
    token: str | None,
    connections: int,
    duration: int,
    workdir: Path,
    children=None,
    threads: int = 1,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """One wrk run; `children.register(proc)` lets the caller end it on Ctrl-C."""
    lines = header_lines(token, headers)
    script = workdir / f"post-{abs(hash((url, tuple(lines)))) % 10**8}.lua"
    auth = "\n".join(f"wrk.headers[ {_lua_string(k)} ] = {_lua_string(v)}" for k, v in lines)
    script.write_text(
        WRK_SCRIPT % {"body": _lua_string(body.decode()), "auth": auth, "mark": WRK_MARK}
    )
    cmd = [
        "wrk",
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, process_group=0
    )
    if children is not None:
        children.register(proc)
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"wrk did not finish within {duration + 60} s") from None
    if children is not None:
        children.unregister(proc)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next((ln for ln in out.splitlines() if ln.startswith(WRK_MARK)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip() or out.strip()}")
    data = json.loads(line[len(WRK_MARK) :])
    non_2xx = 0
    match = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", out)
    if match:
        non_2xx = int(match.group(1))
    seconds = data["duration_us"] / 1e6
    errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    return LoadResult(
        requests=data["requests"],
        duration_s=seconds,
        rps=data["requests"] / seconds if seconds else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors=errors,
        non_2xx=max(non_2xx, data["status"]),
        loadgen_cpu_s=cpu,
        tool="wrk",
    )


# ---------------------------------------------------------------------------------------------
# A minimal asyncio HTTP/1.1 client (keep-alive, Content-Length or chunked answers).


def _request_bytes(
    url: str,
    body: bytes,
    token: str | None,
    close: bool = False,
    headers: dict[str, str] | None = None,
) -> bytes:
    parts = urlsplit(url)
    lines = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{name}: {value}" for name, value in header_lines(token, headers)]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _open(url: str):
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=1 << 20)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                return body
            body += (await reader.readexactly(size + 2))[:-2]
    length = headers.get("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read()


def run_python_load(
    url: str,
    body: bytes,
    token: str | None,
    connections: int,
    duration: float,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """`connections` keep-alive clients sending back to back for `duration` seconds."""
    request = _request_bytes(url, body, token, headers=headers)
    latencies: list[float] = []
    counters = {"errors": 0, "non_2xx": 0}

    async def client(deadline: float) -> None:
        conn = None
        while time.perf_counter() < deadline:
            try:
                if conn is None:
                    conn = await _open(url)
                reader, writer = conn
                start = time.perf_counter()
                writer.write(request)
                status, headers = await _read_head(reader)
                await _read_body(reader, headers)
                latencies.append(time.perf_counter() - start)
                if not 200 <= status < 400:
                    counters["non_2xx"] += 1
                if headers.get("connection", "").lower() == "close":
                    writer.close()
                    conn = None
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                counters["errors"] += 1
                if conn is not None:
                    conn[1].close()
                conn = None
                await asyncio.sleep(0.01)
        if conn is not None:
            conn[1].close()

    async def main() -> float:
        start = time.perf_counter()
        deadline = start + duration
        await asyncio.gather(*(client(deadline) for _ in range(connections)))
        return time.perf_counter() - start

    before = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = asyncio.run(main())
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ms = [x * 1000 for x in latencies]
    return LoadResult(
        requests=len(ms),
        duration_s=elapsed,
        rps=len(ms) / elapsed if elapsed else 0.0,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms) if ms else math.nan,
        errors=counters["errors"],
        non_2xx=counters["non_2xx"],
        loadgen_cpu_s=cpu,
        tool="python",
    )


# ---------------------------------------------------------------------------------------------
# Streams


@dataclass
class StreamResult:
    streams: int = 0
    failed: int = 0
    ttfb_ms: list[float] = field(default_factory=list)
    delays_ms: list[float] = field(default_factory=list)
    # The first chunk's delay also holds the server's set-up of the answer (part of its TTFB);
    # the later chunks' is the relay alone.
    first_delays_ms: list[float] = field(default_factory=list)
    later_delays_ms: list[float] = field(default_factory=list)
    chunks: int = 0
    expected_chunks: int = 0
    problems: list[str] = field(default_factory=list)
    # (delay ms, index of the chunk in its stream) of the slowest chunks, for diagnosis.
    worst: list[tuple[float, int]] = field(default_factory=list)
    # (opened, ended) wall-clock times of every completed stream, for the peak concurrency.
    spans: list[tuple[float, float]] = field(default_factory=list)

    def merge(self, other: StreamResult) -> None:
        self.streams += other.streams
        self.failed += other.failed
        self.ttfb_ms += other.ttfb_ms
        self.delays_ms += other.delays_ms
        self.first_delays_ms += other.first_delays_ms
        self.later_delays_ms += other.later_delays_ms
        self.chunks += other.chunks
        self.expected_chunks += other.expected_chunks
        self.problems += other.problems
        self.worst = sorted(self.worst + other.worst, reverse=True)[:5]
        self.spans += other.spans

    def peak_open(self) -> int:
        """The most streams that were open at the same moment."""
        edges = sorted(
            [(start, 1) for start, _ in self.spans] + [(end, -1) for _, end in self.spans]
        )
        peak = current = 0
        for _, step in edges:
            current += step
            peak = max(peak, current)
        return peak

    def summary(self) -> dict:
        return {
            "streams": self.streams,
            "failed": self.failed,
            "chunks": self.chunks,
            "expected_chunks": self.expected_chunks,
            "ttfb_p50_ms": percentile(self.ttfb_ms, 50),
            "ttfb_p99_ms": percentile(self.ttfb_ms, 99),
            "ttfb_max_ms": max(self.ttfb_ms) if self.ttfb_ms else math.nan,
            "delay_p50_ms": percentile(self.delays_ms, 50),
            "delay_p99_ms": percentile(self.delays_ms, 99),
            "delay_max_ms": max(self.delays_ms) if self.delays_ms else math.nan,
            "first_delay_p50_ms": percentile(self.first_delays_ms, 50),
            "first_delay_max_ms": max(self.first_delays_ms) if self.first_delays_ms else math.nan,
            "later_delay_p99_ms": percentile(self.later_delays_ms, 99),
            "later_delay_max_ms": max(self.later_delays_ms) if self.later_delays_ms else math.nan,
            "peak_open": self.peak_open(),
            "problems": self.problems[:5],
            "worst_chunks": [
                {"delay_ms": round(delay, 3), "chunk": index} for delay, index in self.worst
            ],
        }


class _ChunkedSSE:
    """Incremental chunked-transfer decoding (optional) and SSE event splitting."""

    def __init__(self, chunked: bool) -> None:
        self.chunked = chunked
        self.raw = b""
        self.text = b""
        self.finished = False

    def feed(self, data: bytes) -> list[str]:
        if self.chunked:
            self.raw += data
            while True:
                line_end = self.raw.find(b"\r\n")
                if line_end < 0:
                    break
                size = int(self.raw[:line_end].split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.finished = True
                    self.raw = b""
                    break
                if len(self.raw) < line_end + 2 + size + 2:
                    break
                self.text += self.raw[line_end + 2 : line_end + 2 + size]
                self.raw = self.raw[line_end + 2 + size + 2 :]
        else:
            self.text += data
        events = []
        while True:
            end = self.text.find(b"\n\n")
            if end < 0:
                break
            block, self.text = self.text[:end], self.text[end + 2 :]
            data_lines = [
                line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:")
            ]
            if data_lines:
                events.append(b"\n".join(data_lines).decode())
        return events


async def _one_stream(
    url: str,
    body: bytes,
    token: str | None,
    result: StreamResult,
    timeout: float,
    extra_headers: dict[str, str] | None = None,
) -> None:
    reader, writer = await _open(url)
    try:
        start = time.time()
        writer.write(_request_bytes(url, body, token, close=True, headers=extra_headers))
        status, headers = await asyncio.wait_for(_read_head(reader), timeout)
        if status != 200:
            text = await _read_body(reader, headers)
            raise RuntimeError(f"status {status}: {text[:200]!r}")
        parser = _ChunkedSSE("chunked" in headers.get("transfer-encoding", "").lower())
        first = None
        delays: list[float] = []
        done = False
        while not done:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            now = time.time()
            if not data:
                break
            for event in parser.feed(data):
                if first is None:
                    first = now
                if event == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(event)
                if "error" in chunk:
                    raise RuntimeError(f"in-band error: {event[:200]}")
                for choice in chunk.get("choices") or []:
                    match = TS_RE.search((choice.get("delta") or {}).get("content") or "")
                    if match:
                        delays.append((now - float(match.group(1))) * 1000)
        if not done:
            raise RuntimeError("the stream ended without data: [DONE]")
        result.ttfb_ms.append((first - start) * 1000)
        result.delays_ms.extend(delays)
        result.first_delays_ms.extend(delays[:1])
        result.later_delays_ms.extend(delays[1:])
        result.worst = sorted(result.worst + [(d, i) for i, d in enumerate(delays)], reverse=True)[
            :5
        ]
        result.chunks += len(delays)
        result.spans.append((start, time.time()))
    finally:
        writer.close()


def measure_streams(
    url: str,
    body: bytes,
    token: str | None,
    concurrent: int,
    rounds: int,
    chunks: int,
    interval: float,
    timeout: float = 30.0,
    spread: float | None = None,
    headers: dict[str, str] | None = None,
) -> StreamResult:
    """`rounds` times, `concurrent` streams at once, their starts spread evenly over `spread`
    seconds (default: one chunk interval)."""
    result = StreamResult(expected_chunks=concurrent * rounds * chunks)
    spread = interval if spread is None else spread

    async def staggered(index: int) -> None:
        await asyncio.sleep(spread * index / concurrent)
        result.streams += 1
        try:
            await _one_stream(url, body, token, result, timeout, headers)
        except (
            TimeoutError,
            OSError,
            asyncio.IncompleteReadError,
            RuntimeError,
            ValueError,
        ) as err:
            result.failed += 1
            result.problems.append(f"{type(err).__name__}: {err}")

    async def main() -> None:
        for _ in range(rounds):
            await asyncio.gather(*(staggered(i) for i in range(concurrent)))

    asyncio.run(main())
    return result


def scratch_dir(base: Path) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=base))
