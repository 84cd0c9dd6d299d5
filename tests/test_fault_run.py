"""The fault run (issue 8): steady load on a real gunicorn proxy while everything around it fails.

One gunicorn proxy (2 gthread workers) sits in front of several deployments of one model, all
served by a stub upstream whose handler picks, seeded, among healthy answers and faults: 500, 503,
429 with Retry-After, connection resets, silence past the read timeout, garbage bodies, streams
cut, stalled or broken mid-way. Quotas and cooldowns live in a real redis-server that is stopped
and restarted during the run. A pool of clients (plain `requests` and the `openai` SDK, streaming
and not, some hanging up mid-stream on purpose) keeps the proxy busy.

Every client must get a valid answer, a documented JSON error, or a stream that ends with exactly
one `[DONE]` or exactly one in-band error; nothing answers 500; nothing hangs; once the load
stops, no upstream connection stays checked out in either worker (GET /admin/status on new
connections, each answer tied to its worker through /proc); the gauge read for that is exact
(one stream open: one connection in use); and the deployments come back once the faults stop.

    AI_PROXY_FAULT_SECONDS  length of the load (default 8; raise it for a soak)
    AI_PROXY_FAULT_SEED     seed of the fault sequence and of the clients' choices (default 8)
    AI_PROXY_FAULT_CLIENTS  concurrent client workers (default 10)

Run alone with `pytest -n 0 -m fault -s` to see the outcome table; `-m "not fault"` leaves it out.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import openai
import pytest
import requests

from tests.servers import wait_until
from tests.stub_upstream import Recorded, Reply, chat_chunks, chat_completion

FAULT_SECONDS = float(os.environ.get("AI_PROXY_FAULT_SECONDS") or 8)
SEED = int(os.environ.get("AI_PROXY_FAULT_SEED") or 8)
CLIENTS = int(os.environ.get("AI_PROXY_FAULT_CLIENTS") or 10)

TOKEN = "sk-fault-run-client"
ADMIN_TOKEN = "fault-run-admin"
UPSTREAM_KEY = "sk-upstream-fault-secret"
MODEL = "gpt-fault"
DEPLOYMENTS = 6
WORKERS = 2
THREADS = 8

READ_TIMEOUT = 0.5  # http_client_config.timeout_seconds of every deployment
SILENCE = READ_TIMEOUT + 0.4  # how long a hanging upstream stays silent
REQUEST_TIMEOUT = 4.0  # routing.request_timeout_seconds: first byte due by then
STREAM_TIMEOUT = 10.0  # routing.stream_timeout_seconds
MAX_ATTEMPTS = 3
COOLDOWN = 0.25  # routing.cooldown_seconds: failed deployments come back soon
CLIENT_READ_TIMEOUT = 20.0  # a client gives up on silence this long: that is a hang
MAX_REQUEST_SECONDS = REQUEST_TIMEOUT + STREAM_TIMEOUT + 3  # any longer is a hang
REDIS_OUTAGE_SECONDS = 2.0
REDIS_OUTAGE_EVERY = 15.0  # seconds between outages in a longer soak

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]
SENTENCE = " ".join(WORDS)
MESSAGES = [{"role": "user", "content": "fault run"}]

# Documented error statuses (CONTRACT section 6) and the `type` each one carries.
ERROR_TYPES = {
    400: {"invalid_request_error"},
    401: {"authentication_error"},
    403: {"permission_error"},
    404: {"invalid_request_error"},
    413: {"invalid_request_error"},
    429: {"rate_limit_error"},
    502: {"upstream_error"},
    503: {"service_unavailable"},
    504: {"timeout_error"},
}
# What an in-band error may say: the upstream failed or went silent, never the proxy itself.
IN_BAND = {("upstream_error", "upstream_error"), ("timeout_error", "upstream_timeout")}


# -- the faulty upstream --------------------------------------------------------------------------


def _events(model: str) -> list[str]:
    return chat_chunks(WORDS, model=model)  # role, 9 words, finish, usage, [DONE]


def _stalled(events: list[str], at: int) -> Iterator[str]:
    """Events up to `at`, then silence past the proxy's read timeout, then the rest."""
    yield from events[:at]
    time.sleep(SILENCE)
    yield from events[at:]


def _whole(model: str) -> dict:
    return chat_completion(SENTENCE, model=model)


# name -> (weight for whole requests, weight for stream requests, reply builder)
FAULTS = {
    "ok json": (45, 4, lambda rng, m: Reply(body=_whole(m))),
    "ok stream": (0, 30, lambda rng, m: Reply(events=_events(m))),
    "slow json": (5, 0, lambda rng, m: Reply(body=_whole(m), hang=READ_TIMEOUT / 2)),
    "slow stream": (0, 8, lambda rng, m: Reply(events=_events(m), delay=0.12)),
    "500": (6, 5, lambda rng, m: Reply(status=500, body={"error": {"message": "internal"}})),
    "503": (5, 4, lambda rng, m: Reply(status=503, body={"error": "unavailable"})),
    "429 Retry-After": (
        4,
        3,
        lambda rng, m: Reply(
            status=429,
            body={"error": {"message": "slow down", "type": "rate_limit_error"}},
            headers={"Retry-After": rng.choice(["0", "1"])},
        ),
    ),
    "400 bad parameter": (
        1,
        1,
        lambda rng, m: Reply(
            status=400,
            body={"error": {"message": "bad 'temperature'", "type": "invalid_request_error"}},
        ),
    ),
    "connection reset": (5, 4, lambda rng, m: Reply(reset=True)),
    "hang past read timeout": (
        4,
        3,
        lambda rng, m: (
            Reply(body=_whole(m), hang=SILENCE)
            if rng.random() < 0.5
            else Reply(events=_events(m), hang=SILENCE)
        ),
    ),
    "garbage body": (
        5,
        3,
        lambda rng, m: (
            Reply(raw=b"<html><body>502 Bad Gateway</body></html>")
            if rng.random() < 0.6
            else Reply(events=["<html>", "oops, not an event stream"])
        ),
    ),
    "stream cut": (
        0,
        5,
        lambda rng, m: Reply(events=_events(m), cut_after=rng.randrange(0, 12)),
    ),
    "invalid JSON mid-stream": (
        0,
        4,
        lambda rng, m: Reply(
            events=_splice(_events(m), rng.randrange(0, 11), 'data: {"choices": [')
        ),
    ),
    "stall mid-stream": (
        0,
        3,
        lambda rng, m: Reply(events=_stalled(_events(m), rng.randrange(1, 11))),
    ),
    "error event mid-stream": (
        0,
        2,
        lambda rng, m: Reply(
            events=_splice(
                _events(m)[:-1],
                rng.randrange(1, 11),
                'data: {"error": {"message": "overloaded", "type": "server_error"}}',
                cut=True,
            )
        ),
    ),
}


def _splice(events: list[str], at: int, bad: str, cut: bool = False) -> list[str]:
    return events[:at] + [bad] + ([] if cut else events[at:])


class FaultyUpstream:
    """The stub's handler: a seeded choice of reply per upstream request, recorded per client
    request (the proxy forwards the client's X-Request-ID upstream)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.served: dict[str, list[str]] = defaultdict(list)
        self.counts: Counter[str] = Counter()
        self.mode = "faults"  # or "healthy", or "slow" (every stream slow, for the gauge check)

    def __call__(self, record: Recorded) -> Reply:
        try:
            body = record.json()
        except ValueError:
            body = {}
        stream = bool(body.get("stream"))
        model = body.get("model") or "up"
        request_id = next(
            (v for k, v in record.headers.items() if k.lower() == "x-request-id"), "?"
        )
        with self.lock:
            if self.mode != "faults":
                kind = (
                    ("slow stream" if self.mode == "slow" else "ok stream") if stream else "ok json"
                )
            else:
                names = list(FAULTS)
                weights = [FAULTS[n][1 if stream else 0] for n in names]
                kind = self.rng.choices(names, weights)[0]
            reply = FAULTS[kind][2](self.rng, model)
            self.served[request_id].append(kind)
            self.counts[kind] += 1
        return reply


# -- validating what clients got ------------------------------------------------------------------


@dataclass
class Result:
    request_id: str
    client: str  # "requests" or "openai"
    mode: str  # "whole", "stream" or "stream+hangup"
    outcome: str = "?"
    problems: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    redis_down: bool = False


class Checker:
    """Validation shared by the clients; `secrets` must never appear in anything sent back."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets

    def leaks(self, text: str) -> list[str]:
        return [f"error message leaks {s!r}" for s in self.secrets if s in text]

    def error_body(self, status: int, headers, raw: bytes) -> tuple[str, list[str]]:
        """A JSON error answer: documented status, JSON, OpenAI's error shape."""
        problems = []
        outcome = f"{status} ?"
        if status == 500:
            problems.append("the proxy answered 500")
        if status not in ERROR_TYPES:
            problems.append(f"undocumented status {status}")
        content_type = headers.get("Content-Type", "")
        if not content_type.startswith("application/json"):
            problems.append(f"error with Content-Type {content_type!r}")
        try:
            body = json.loads(raw)
        except ValueError:
            return outcome, [*problems, f"error body is not JSON: {raw[:200]!r}"]
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return outcome, [*problems, f"error body without an error object: {body!r}"]
        outcome = f"{status} {err.get('code')}"
        problems += self._error_fields(err)
        if err.get("type") not in ERROR_TYPES.get(status, set()):
            problems.append(f"status {status} with error type {err.get('type')!r}")
        if status in (429, 503) and not str(headers.get("Retry-After", "")).isdigit():
            problems.append(f"{status} without an integer Retry-After")
        return outcome, problems

    def _error_fields(self, err: dict) -> list[str]:
        problems = []
        if not isinstance(err.get("message"), str) or not err["message"]:
            problems.append(f"error without a message: {err!r}")
        if not isinstance(err.get("type"), str):
            problems.append(f"error without a type: {err!r}")
        for key in ("param", "code"):
            if key not in err or not (err[key] is None or isinstance(err[key], str)):
                problems.append(f"error field {key!r} missing or not str|null: {err!r}")
        if err.get("code") == "internal_error":
            problems.append(f"the proxy failed inside: {err!r}")
        return problems + self.leaks(json.dumps(err))

    def completion(self, status: int, headers, raw: bytes) -> list[str]:
        problems = []
        if not headers.get("Content-Type", "").startswith("application/json"):
            problems.append(f"200 with Content-Type {headers.get('Content-Type')!r}")
        try:
            body = json.loads(raw)
        except ValueError:
            return [*problems, f"200 with a body that is not JSON: {raw[:200]!r}"]
        problems += self._completion_body(body)
        problems += self._routing_headers(headers)
        return problems

    @staticmethod
    def _completion_body(body: object) -> list[str]:
        try:
            ok = body["object"] == "chat.completion" and (
                body["choices"][0]["message"]["content"] == SENTENCE
            )
        except (KeyError, IndexError, TypeError):
            ok = False
        return [] if ok else [f"200 without the chat completion: {str(body)[:300]}"]

    @staticmethod
    def _routing_headers(headers) -> list[str]:
        attempts = headers.get("x-ai-proxy-attempts", "")
        problems = []
        if headers.get("x-ai-proxy-model") != MODEL:
            problems.append(f"x-ai-proxy-model is {headers.get('x-ai-proxy-model')!r}")
        if not attempts.isdigit() or not 1 <= int(attempts) <= MAX_ATTEMPTS:
            problems.append(f"x-ai-proxy-attempts is {attempts!r}")
        return problems

    def stream(self, events: list[object], include_usage: bool) -> tuple[str, list[str]]:
        """A finished stream's events (parsed JSON, or the string "[DONE]")."""
        problems = []
        if not events:
            return "empty stream", ["a 200 stream without a single event"]
        done = [i for i, e in enumerate(events) if e == "[DONE]"]
        errors = [i for i, e in enumerate(events) if isinstance(e, dict) and "error" in e]
        last = len(events) - 1
        if len(done) > 1:
            problems.append(f"{len(done)} [DONE] events")
        if len(errors) > 1:
            problems.append(f"{len(errors)} error events")
        if done and errors:
            problems.append("both [DONE] and an error event")
        if errors and errors[0] != last:
            problems.append(f"events after the error: {events[errors[0] + 1 :][:3]!r}")
        if done and done[0] != last:
            problems.append(f"events after [DONE]: {events[done[0] + 1 :][:3]!r}")
        if not done and not errors:
            problems.append(f"the stream ended without [DONE] or an error: {events[-1]!r}")
        text, models = [], set()
        for event in events:
            if event == "[DONE]" or (isinstance(event, dict) and "error" in event):
                continue
            if not isinstance(event, dict) or event.get("object") != "chat.completion.chunk":
                problems.append(f"not a chat completion chunk: {str(event)[:200]}")
                continue
            models.add(event.get("model"))
            if "usage" in event and not include_usage:
                problems.append("a usage chunk the client did not ask for")
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    text.append(content)
        problems += self.stream_text("".join(text), ended=bool(done) and not errors)
        if len(models) > 1:
            problems.append(f"chunks of several upstream answers spliced: {sorted(models)}")
        if errors:
            err = events[errors[-1]]["error"]
            outcome = f"in-band {err.get('code') if isinstance(err, dict) else '?'}"
            problems += self.in_band(err)
        else:
            outcome = "[DONE]" if done else "unterminated"
        return outcome, problems

    @staticmethod
    def stream_text(text: str, ended: bool) -> list[str]:
        if ended and text != SENTENCE:
            return [f"a completed stream said {text!r}, not the one answer"]
        if not ended and not SENTENCE.startswith(text):
            return [f"a failed stream said {text!r}: not a prefix of the one answer"]
        return []

    def in_band(self, err: object) -> list[str]:
        if not isinstance(err, dict):
            return [f"in-band error is not an object: {err!r}"]
        problems = self._error_fields(err)
        if (err.get("type"), err.get("code")) not in IN_BAND:
            problems.append(f"in-band error of type/code {err.get('type')}/{err.get('code')}")
        return problems


def parse_sse(buffer: bytes) -> tuple[list[object], bytes, list[str]]:
    """Complete `data:` events in `buffer`, the incomplete rest, and format problems."""
    events: list[object] = []
    problems: list[str] = []
    while b"\n\n" in buffer:
        block, buffer = buffer.split(b"\n\n", 1)
        if not block.startswith(b"data: ") or b"\n" in block:
            problems.append(f"not a single data: line: {block[:200]!r}")
            continue
        data = block[6:].decode("utf-8", "replace")
        if data == "[DONE]":
            events.append("[DONE]")
            continue
        try:
            events.append(json.loads(data))
        except ValueError:
            problems.append(f"an event that is not JSON: {data[:200]!r}")
    return events, buffer, problems


# -- the clients ----------------------------------------------------------------------------------


class Load:
    """Client workers sending requests until `stop_at`; each result is checked when it ends."""

    def __init__(self, url: str, checker: Checker, redis_down: threading.Event) -> None:
        self.url = url
        self.checker = checker
        self.redis_down = redis_down
        self.results: list[Result] = []
        self.lock = threading.Lock()

    def worker(self, index: int, stop_at: float) -> None:
        rng = random.Random(SEED * 1000 + index)
        session = requests.Session()
        session.trust_env = False
        sdk = openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=TOKEN,
            max_retries=0,
            timeout=openai.Timeout(CLIENT_READ_TIMEOUT, connect=5.0),
        )
        n = 0
        try:
            while time.monotonic() < stop_at:
                n += 1
                request_id = f"fr-{index}-{n}"
                roll = rng.random()
                # (client, mode, events read before hanging up on purpose)
                if roll < 0.28:
                    result, hangup = Result(request_id, "requests", "whole"), None
                elif roll < 0.56:
                    result, hangup = Result(request_id, "requests", "stream"), None
                elif roll < 0.68:
                    result = Result(request_id, "requests", "stream+hangup")
                    hangup = rng.randint(1, 6)
                elif roll < 0.82:
                    result, hangup = Result(request_id, "openai", "whole"), None
                elif roll < 0.94:
                    result, hangup = Result(request_id, "openai", "stream"), None
                else:
                    result = Result(request_id, "openai", "stream+hangup")
                    hangup = rng.randint(1, 4)
                result.redis_down = self.redis_down.is_set()
                started = time.monotonic()
                try:
                    if result.client == "requests" and result.mode == "whole":
                        self.requests_whole(session, result)
                    elif result.client == "requests":
                        self.requests_stream(session, result, rng, hangup)
                    elif result.mode == "whole":
                        self.sdk_whole(sdk, result)
                    else:
                        self.sdk_stream(sdk, result, hangup)
                except Exception as err:  # noqa: BLE001 - any client-side failure is a finding.
                    result.outcome = f"client {type(err).__name__}"
                    result.problems.append(f"the client failed: {type(err).__name__}: {err}")
                result.elapsed = time.monotonic() - started
                if result.elapsed > MAX_REQUEST_SECONDS:
                    result.problems.append(f"took {result.elapsed:.1f}s")
                with self.lock:
                    self.results.append(result)
                if result.outcome.startswith(("503", "429")):
                    # A polite client waits a little (not the whole Retry-After) before the next.
                    time.sleep(rng.uniform(0.05, 0.2))
        finally:
            session.close()
            sdk.close()

    def _post(self, session, result: Result, body: dict, stream: bool) -> requests.Response:
        return session.post(
            self.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {TOKEN}", "X-Request-ID": result.request_id},
            timeout=(5, CLIENT_READ_TIMEOUT),
            stream=stream,
        )

    def requests_whole(self, session, result: Result) -> None:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
        response = self._post(session, result, body, stream=False)
        if response.headers.get("x-request-id") != result.request_id:
            result.problems.append("x-request-id not echoed")
        if response.status_code == 200:
            result.outcome = "200"
            result.problems += self.checker.completion(200, response.headers, response.content)
        else:
            result.outcome, problems = self.checker.error_body(
                response.status_code, response.headers, response.content
            )
            result.problems += problems

    def requests_stream(self, session, result: Result, rng, hangup: int | None) -> None:
        include_usage = rng.random() < 0.25
        body = {"model": MODEL, "messages": MESSAGES, "stream": True}
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        response = self._post(session, result, body, stream=True)
        with response:
            if response.status_code != 200:
                result.outcome, problems = self.checker.error_body(
                    response.status_code, response.headers, response.content
                )
                result.problems += problems
                return
            headers = response.headers
            if not headers.get("Content-Type", "").startswith("text/event-stream"):
                result.problems.append(f"200 stream of type {headers.get('Content-Type')!r}")
            if headers.get("X-Accel-Buffering") != "no":
                result.problems.append("stream without X-Accel-Buffering: no")
            result.problems += self.checker._routing_headers(headers)
            events: list[object] = []
            buffer = b""
            for data in response.iter_content(chunk_size=None):
                buffer += data
                parsed, buffer, problems = parse_sse(buffer)
                events += parsed
                result.problems += problems
                terminal = events and (
                    events[-1] == "[DONE]"
                    or (isinstance(events[-1], dict) and "error" in events[-1])
                )
                if hangup is not None and len(events) >= hangup and not terminal:
                    result.outcome = f"hung up after {hangup}"
                    response.close()  # the client goes away mid-stream, on purpose
                    return
            if buffer.strip():
                result.problems.append(f"the stream ended mid-event: {buffer[:200]!r}")
        result.outcome, problems = self.checker.stream(events, include_usage)
        result.problems += problems

    def sdk_whole(self, sdk: openai.OpenAI, result: Result) -> None:
        try:
            answer = sdk.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                extra_headers={"X-Request-ID": result.request_id},
            )
        except openai.APIStatusError as err:
            result.outcome, problems = self.checker.error_body(
                err.status_code, err.response.headers, err.response.content
            )
            result.problems += problems
            return
        result.outcome = "200"
        if answer.choices[0].message.content != SENTENCE:
            result.problems.append(f"SDK answer {answer.choices[0].message.content!r}")

    def sdk_stream(self, sdk: openai.OpenAI, result: Result, hangup: int | None) -> None:
        text = []
        try:
            stream = sdk.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                extra_headers={"X-Request-ID": result.request_id},
            )
        except openai.APIStatusError as err:
            result.outcome, problems = self.checker.error_body(
                err.status_code, err.response.headers, err.response.content
            )
            result.problems += problems
            return
        try:
            for n, chunk in enumerate(stream, start=1):
                for choice in chunk.choices:
                    if choice.delta.content:
                        text.append(choice.delta.content)
                if hangup is not None and n >= hangup:
                    result.outcome = f"hung up after {hangup}"
                    stream.close()
                    return
        except openai.APIStatusError:
            raise
        except (openai.APIConnectionError, openai.APITimeoutError):
            raise
        except openai.APIError as err:
            # The SDK raises the stream's in-band error event.
            body = err.body if isinstance(err.body, dict) else {}
            result.outcome = f"in-band {body.get('code')}"
            result.problems += self.checker.in_band(body)
            result.problems += self.checker.stream_text("".join(text), ended=False)
            return
        finally:
            stream.close()
        result.outcome = "[DONE]"
        result.problems += self.checker.stream_text("".join(text), ended=True)


# -- which worker answered, and what it says ------------------------------------------------------


HAVE_PROC = os.path.exists("/proc/net/tcp")  # Linux: workers can be told apart


def worker_pids(master: int) -> set[int]:
    """gunicorn's worker processes: the children of the master (empty without /proc)."""
    pids: set[int] = set()
    if not HAVE_PROC:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its closing paren.
        if int(stat.rsplit(")", 1)[1].split()[1]) == master:
            pids.add(int(entry))
    return pids


def owner_of(client_port: int, server_port: int, pids: set[int]) -> int | None:
    """The worker holding the server side of our connection (Linux /proc), if it can be told."""
    inode = None
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                local, remote = fields[1], fields[2]
                if (
                    int(local.split(":")[1], 16) == server_port
                    and int(remote.split(":")[1], 16) == client_port
                ):
                    inode = fields[9]
    except OSError:
        return None
    if inode is None:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def admin_status(url: str, pids: set[int]) -> tuple[int | None, dict]:
    """GET /admin/status on a new connection; (worker pid or None, report)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", "/admin/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, body
        # The connection is kept alive, so the worker still holds its end.
        pid = owner_of(conn.sock.getsockname()[1], parts.port, pids) if conn.sock else None
        return pid, json.loads(body)
    finally:
        conn.close()


def in_use_beside_one_stream(url: str, pids: set[int]) -> tuple[int | None, int | None]:
    """Open one slow stream, then ask its worker how many upstream connections are in use.

    Nothing else is running, so the right answer is exactly 1: this checks the gauge that the
    zero at the end of the run is read from. Returns (the worker's answer, its pid).
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            body=json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True}),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 200, response.read()
        response.read1(64)  # the first event is here: the upstream stream is open
        pid = owner_of(conn.sock.getsockname()[1], parts.port, pids)
        if pid is None:
            return None, None
        for _ in range(40):  # other answers come from the other worker
            answered_by, report = admin_status(url, pids)
            if answered_by == pid:
                return report["upstream_connections"]["in_use"], pid
        return None, pid
    finally:
        conn.close()


# -- the run --------------------------------------------------------------------------------------


def fault_config(upstream_url: str, redis_url: str) -> dict:
    return {
        "auth": {
            "tokens": [{"name": "load", "token": TOKEN, "requests_per_minute": 1_000_000}],
            "admin_token": ADMIN_TOKEN,
        },
        "models": [
            {
                "name": MODEL,
                "provider": "openai",
                "base_url": upstream_url + "/v1",
                "token": UPSTREAM_KEY,
                "model": f"up-{i}",
                "priority": 1,
                "requests_per_minute": 1_000_000,
                "http_client_config": {
                    "timeout_seconds": READ_TIMEOUT,
                    "connect_timeout_seconds": 2,
                },
            }
            for i in range(DEPLOYMENTS)
        ],
        "routing": {
            "max_attempts": MAX_ATTEMPTS,
            "cooldown_seconds": COOLDOWN,
            "request_timeout_seconds": REQUEST_TIMEOUT,
            "stream_timeout_seconds": STREAM_TIMEOUT,
        },
        "retry": {"max_retries": 1, "base_delay": "10ms", "max_delay": "300ms", "jitter": 0.1},
        "rate_limits": {"storage": redis_url},
    }


def redis_chaos(redis_server, down: threading.Event, started: float, stop_at: float, log: list):
    """Stop Redis for a couple of seconds, once in a short run, every so often in a soak."""
    next_outage = started + max(1.0, 0.3 * (stop_at - started))
    while next_outage + REDIS_OUTAGE_SECONDS + 1 < stop_at:
        time.sleep(max(0.0, next_outage - time.monotonic()))
        redis_server.stop()
        down.set()
        went = time.monotonic()
        time.sleep(REDIS_OUTAGE_SECONDS)
        redis_server.start()
        down.clear()
        log.append((went - started, time.monotonic() - started))
        next_outage += REDIS_OUTAGE_EVERY


def watch_connections(url: str, stop_at: float, seen: list[int]) -> None:
    """Sample upstream connections in use during the load (so the final zero means something)."""
    while time.monotonic() < stop_at:
        try:
            seen.append(admin_status(url, set())[1]["upstream_connections"]["in_use"])
        except Exception:  # noqa: BLE001 - a sample lost under load is no finding.
            pass
        time.sleep(0.25)


def proxy_log_findings(logs: str) -> dict[str, list[str]]:
    """Lines of the proxy's log that show it failing itself (JSON lines, LOG_FORMAT=json)."""
    found: dict[str, list[str]] = defaultdict(list)
    for line in logs.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            if "Traceback" in line:
                found["traceback"].append(line)
            continue
        if not isinstance(entry, dict):
            continue
        message = str(entry.get("msg", ""))
        if entry.get("logger") == "ai_proxy.access" and entry.get("status") == 500:
            found["access 500"].append(line)
        elif "unhandled error" in message or "stream failed inside the proxy" in message:
            found["proxy failed inside"].append(line)
        elif entry.get("exc") or entry.get("level") in ("ERROR", "CRITICAL"):
            found["error logged"].append(line)
        if "WORKER TIMEOUT" in message or "Worker exited" in message:
            found["worker died"].append(line)
    return found


def outcome_table(results: list[Result], served: dict[str, list[str]]) -> str:
    """Outcomes per fault kind, the kind being the last upstream reply the request got."""
    rows: dict[str, Counter] = defaultdict(Counter)
    for result in results:
        kinds = served.get(result.request_id) or ["(no upstream call)"]
        label = "INVALID" if result.problems else _column(result.outcome)
        rows[kinds[-1]][label] += 1
        rows["TOTAL"][label] += 1
    columns = sorted({c for row in rows.values() for c in row}, key=_column_order)
    order = [k for k in [*FAULTS, "(no upstream call)"] if k in rows] + ["TOTAL"]
    width = max(len(k) for k in order)
    lines = [
        f"{'last upstream reply':<{width}} " + " ".join(f"{c:>14}" for c in columns) + "   all",
    ]
    for kind in order:
        row = rows[kind]
        lines.append(
            f"{kind:<{width}} "
            + " ".join(f"{row[c] or '':>14}" for c in columns)
            + f" {sum(row.values()):>5}"
        )
    return "\n".join(lines)


def _column(outcome: str) -> str:
    return "hung up" if outcome.startswith("hung up") else outcome


def _column_order(column: str) -> tuple:
    first = ("200", "[DONE]", "hung up")
    if column in first:
        return (0, first.index(column), column)
    if column.startswith("in-band"):
        return (1, 0, column)
    return (2, 0, column)


@pytest.mark.fault
@pytest.mark.timeout(int(FAULT_SECONDS) + 180)
def test_fault_run(proxy_factory, redis_server, upstream):
    run_started = time.monotonic()
    upstream.server.socket.listen(256)  # the stub's default backlog of 5 would drop connects
    faulty = FaultyUpstream(SEED)
    upstream.handler = faulty
    proxy = proxy_factory(
        fault_config(upstream.url, redis_server.url),
        env={"RATE_LIMIT_STORAGE": redis_server.url, "LOG_FORMAT": "json"},
        workers=WORKERS,
        threads=THREADS,
    )
    pids_before = worker_pids(proxy.proc.pid)
    assert len(pids_before) == (WORKERS if HAVE_PROC else 0), pids_before

    checker = Checker((f"127.0.0.1:{upstream.port}", UPSTREAM_KEY, "/v1/chat/completions"))
    redis_down = threading.Event()
    load = Load(proxy.url, checker, redis_down)
    outages: list[tuple[float, float]] = []
    in_use_samples: list[int] = []

    # Steady load, with Redis going away and coming back in the middle of it.
    started = time.monotonic()
    stop_at = started + FAULT_SECONDS
    with ThreadPoolExecutor(CLIENTS + 2, thread_name_prefix="fault-client") as pool:
        futures = [pool.submit(load.worker, i, stop_at) for i in range(CLIENTS)]
        futures.append(
            pool.submit(redis_chaos, redis_server, redis_down, started, stop_at, outages)
        )
        futures.append(pool.submit(watch_connections, proxy.url, stop_at, in_use_samples))
        done, pending = wait(futures, timeout=FAULT_SECONDS + MAX_REQUEST_SECONDS + 30)
        assert not pending, f"{len(pending)} client workers still busy: something hangs"
        for future in done:
            future.result()
    load_seconds = time.monotonic() - started

    # Once the load stops, every worker gives back every upstream connection.
    pids = worker_pids(proxy.proc.pid)
    in_use: dict[object, int] = {}
    unknown_zero_streak = 0

    def all_given_back() -> bool:
        nonlocal unknown_zero_streak
        pid, report = admin_status(proxy.url, pids)
        connections = report["upstream_connections"]
        if pid is None:
            unknown_zero_streak = unknown_zero_streak + 1 if connections["in_use"] == 0 else 0
        else:
            in_use[pid] = connections["in_use"]
        if in_use:
            return set(in_use) == pids and not any(in_use.values())
        return unknown_zero_streak >= 12

    wait_until(all_given_back, timeout=15, interval=0.1)
    drain_seconds = time.monotonic() - started - load_seconds

    # With the faults gone, the deployments come back after their cooldowns.
    faulty.mode = "healthy"
    recover_from = time.monotonic()

    def answered() -> bool:
        response = requests.post(
            proxy.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": MESSAGES},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )
        return response.status_code == 200

    recovered = (
        time.monotonic() - recover_from
        if wait_until(answered, timeout=REQUEST_TIMEOUT + 6, interval=0.2)
        else None
    )
    ready = requests.get(proxy.url + "/readyz", timeout=5)
    faulty.mode = "slow"
    beside_one_stream, stream_worker = in_use_beside_one_stream(proxy.url, pids)

    results = load.results
    findings = proxy_log_findings(proxy.logs())
    bad = [r for r in results if r.problems]
    by_mode = Counter(f"{r.client} {r.mode}" for r in results)
    down = Counter(_column(r.outcome) for r in results if r.redis_down)
    attempts = Counter(len(faulty.served.get(r.request_id, ())) for r in results)
    print()
    print(
        f"fault run: {load_seconds:.1f}s of load (AI_PROXY_FAULT_SECONDS={FAULT_SECONDS:g}, "
        f"seed {SEED}), {CLIENTS} clients, {len(results)} requests "
        f"({len(results) / load_seconds:.0f}/s), {sum(faulty.counts.values())} upstream calls; "
        f"test so far {time.monotonic() - run_started:.1f}s"
    )
    print("clients:", dict(sorted(by_mode.items())))
    print("upstream replies:", dict(faulty.counts.most_common()))
    print("upstream calls per request:", dict(sorted(attempts.items())))
    print(
        "redis outages (s from start):",
        [(round(a, 1), round(b, 1)) for a, b in outages],
        "| outcomes while down:",
        dict(down.most_common()),
    )
    print(
        f"upstream connections in use during the load (one worker per sample): "
        f"max {max(in_use_samples, default=None)}, "
        f"mean {sum(in_use_samples) / max(1, len(in_use_samples)):.1f} "
        f"over {len(in_use_samples)} samples"
    )
    print(
        f"upstream connections in use after the load, per worker: {in_use or 'unidentified'} "
        f"(settled {drain_seconds:.1f}s after the load); recovered after "
        f"{'never' if recovered is None else f'{recovered:.1f}s'}; /readyz {ready.status_code}"
    )
    print(f"one slow stream open, its worker {stream_worker} reports in_use={beside_one_stream}")
    print(outcome_table(results, faulty.served))
    for result in bad[:15]:
        print(
            f"INVALID {result.request_id} {result.client} {result.mode} -> {result.outcome} "
            f"(upstream: {faulty.served.get(result.request_id)}): {result.problems}"
        )
    for kind, lines in findings.items():
        print(f"proxy log, {kind}: {len(lines)}")
        for line in lines[:5]:
            print("   ", line[:600])

    assert outages, "Redis was never stopped: the run is too short (AI_PROXY_FAULT_SECONDS)"
    assert results and len(results) >= CLIENTS
    assert not bad, f"{len(bad)} of {len(results)} answers broke the contract; first: {bad[0]}"
    assert not findings.get("access 500"), findings["access 500"][:5]
    assert not findings.get("proxy failed inside"), findings["proxy failed inside"][:5]
    assert worker_pids(proxy.proc.pid) == pids_before, "a worker died or was replaced"
    assert max(in_use_samples, default=0) > 0, "no connection ever counted in use under load"
    assert in_use and set(in_use) == pids or unknown_zero_streak >= 12, (
        f"not every worker answered /admin/status: {in_use}"
    )
    assert not any(in_use.values()), f"upstream connections left in use: {in_use}"
    assert beside_one_stream in (None, 1), (
        f"with exactly one stream open, its worker reports {beside_one_stream} upstream "
        "connections in use: /admin/status miscounts (UpstreamPool.connections counts the "
        "adapter mounted for http:// and https:// twice)"
    )
    assert recovered is not None, "the deployments never came back after the faults stopped"
    assert ready.status_code == 200, ready.text
