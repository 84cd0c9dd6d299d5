"""Upstream HTTP: one pooled `requests.Session` per provider endpoint, retries, error mapping."""

from __future__ import annotations

import contextvars
import email.utils
import errno
import http.cookiejar
import json
import logging
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from urllib3.util.retry import Retry

from . import tracing, watchdog
from .config import RetryConfig
from .errors import UpstreamClientError, UpstreamError, UpstreamTimeoutError
from .hooks import http_client
from .hooks.requests import DirectAdapter, PreparedTemplates, pool_managers
from .hooks.urllib3 import close_idle, close_surplus, drain, pool_counts, remember_targets
from .redact import CLIENT_WORDS, REDACTED, REDACTOR
from .threads import on_threads_settled
from .version import __version__

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 502, 503, 504, 529})
# Upstream answers that are the client's to fix: they go back at once and cool nothing down.
CLIENT_ERROR_STATUSES = frozenset({400, 404, 405, 409, 413, 415, 422})
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
SECRET_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "x-goog-api-key"})
MAX_MESSAGE_CHARS = 1000
MAX_PARAM_CHARS = 200
# A Retry-After is a number of seconds or an HTTP date (29 characters); anything longer is noise.
MAX_RETRY_AFTER_CHARS = 64
# The longest an upstream's own wait (its Retry-After) keeps a deployment out: one answer, from a
# misbehaving upstream or about one model behind a wildcard deployment, cannot switch the
# deployment off for days (or for good, with `inf`).
MAX_UPSTREAM_WAIT_SECONDS = 3600.0
READ_SIZE = 64 * 1024
# Prepared upstream requests kept per method, URL and query (see app.hooks.requests).
MAX_TEMPLATES = 512
# What a finished stream may still send after its last event for its connection to be reused.
DRAIN_SECONDS = 0.05
MAX_DRAIN_BYTES = 64 * 1024
# Pooled connections an origin keeps once a burst's threads have ended (as Go's HTTP client).
KEEP_IDLE = 2
USER_AGENT = f"ai-proxy/{__version__}"
_CONTEXT_RE = re.compile(
    r"context[ _-]?(length|window)|maximum context|too many tokens|prompt is too long"
    r"|reduce the length|context limit|exceeds the maximum number of tokens",
    re.IGNORECASE,
)
_PROVIDER_RE = re.compile(r"\(provider: [\w .-]{1,64}\)$")
# What this thread's next upstream request runs first, once (see `before_sending`).
_before_sending: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "ai_proxy_before_sending", default=None
)


class before_sending:  # noqa: N801 - a context manager, named as one is used
    """Within the block, this thread's next upstream request calls `check` once, prepared but
    before its first byte is sent; what `check` raises fails it unsent (routing's reading of a
    quota answer that was on its way while the request was prepared). A class, not a
    generator: it is on every request's path with Redis quotas."""

    __slots__ = ("check", "token")

    def __init__(self, check: Callable[[], None]) -> None:
        self.check = check

    def __enter__(self) -> None:
        self.token = _before_sending.set(self.check)

    def __exit__(self, *exc_info: object) -> None:
        _before_sending.reset(self.token)


class BackoffRetry(Retry):
    """urllib3 Retry whose jitter is a fraction of the backoff, as the Go proxy's was."""

    def __init__(self, *args, jitter_ratio: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.jitter_ratio = jitter_ratio

    def new(self, **kwargs):
        retry = super().new(**kwargs)
        retry.jitter_ratio = self.jitter_ratio
        return retry

    def increment(
        self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None
    ):
        # A Retry-After past max_delay is not slept in a worker thread: the answer goes back,
        # the deployment cools down for that long and routing tries the next one.
        if response is not None:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            if wait is not None and wait > self.backoff_max:
                raise urllib3.exceptions.MaxRetryError(_pool, url, "Retry-After too long")
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_backoff_time(self) -> float:
        # base_delay before the first retry, doubling after each (urllib3 would skip the first).
        failures = len(self.history)
        if failures == 0 or not self.backoff_factor:
            return 0.0
        backoff = self.backoff_factor * 2 ** (failures - 1)
        if self.jitter_ratio:
            backoff *= 1 + random.uniform(-self.jitter_ratio, self.jitter_ratio)
        return max(0.0, min(self.backoff_max, backoff))


def make_retry(config: RetryConfig) -> BackoffRetry:
    """Retries for one deployment: connection failures and 429/502/503/504, POST included."""
    return BackoffRetry(
        total=config.max_retries,
        connect=config.max_retries,
        # A read error means the upstream may have started work: routing moves on instead.
        read=False,
        status=config.max_retries,
        other=0,
        redirect=False,
        allowed_methods=None,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=config.base_delay,
        backoff_max=config.max_delay,
        raise_on_status=False,
        respect_retry_after_header=True,
        retry_after_max=max(1, int(config.max_delay)),
        jitter_ratio=config.jitter,
    )


def safe_text(text: str) -> str:
    """An upstream message fit for a client or a log line: scrubbed (app.redact), bounded.
    Words the client sent itself are left whole (app.redact.ClientWords)."""
    # Cut before scrubbing so a huge message costs little; what is kept is scrubbed whole.
    return REDACTOR.scrub(text[: MAX_MESSAGE_CHARS * 4], CLIENT_WORDS.get())[:MAX_MESSAGE_CHARS]


_CODE_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def safe_code(code: str | None) -> str | None:
    """An upstream's error code for the client: an identifier, with nothing of a secret in it
    (it is checked here, not when the answer goes out: see Redactor.scrub_reflected)."""
    if not code or not _CODE_RE.fullmatch(code) or safe_text(code) != code:
        return None
    return code


def error_param(payload: object) -> str | None:
    """The request field an upstream's refusal names (OpenAI's `param`), for the client."""
    err = payload.get("error") if isinstance(payload, dict) else None
    param = err.get("param") if isinstance(err, dict) else None
    if not isinstance(param, str) or not param or len(param) > MAX_PARAM_CHARS:
        return None
    return safe_text(param)


def error_message(payload: object) -> tuple[str | None, str | None]:
    """The message and code in an upstream error body, whatever provider shaped it. The code is
    fit for a client already (safe_code); the message is the caller's to scrub (safe_text)."""
    if isinstance(payload, list) and payload:
        payload = payload[0]
    if not isinstance(payload, dict):
        return None, None
    errors = payload.get("errors")
    if "error" not in payload and isinstance(errors, list) and errors:
        # Cloudflare's v4 envelope: {"success": false, "errors": [{"code", "message"}]}.
        first = errors[0]
        payload = first if isinstance(first, dict) else {"message": str(first)}
    err = payload.get("error", payload)
    if isinstance(err, str):
        return err, None
    if isinstance(err, dict):
        message = err.get("message") or err.get("detail") or payload.get("message")
        # Gemini's `code` is the HTTP status number; its `status` names the error.
        code = next(
            (
                c
                for c in (err.get("code"), err.get("type"), err.get("status"))
                if isinstance(c, str) and c
            ),
            None,
        )
        if isinstance(message, (dict, list)):
            message = json.dumps(message)
        metadata = err.get("metadata")
        provider = metadata.get("provider_name") if isinstance(metadata, dict) else None
        if message and isinstance(provider, str) and provider:
            # OpenRouter names the provider behind the failure; operators want to see it.
            message = f"{message} (provider: {provider})"
        return (str(message) if message else None), safe_code(str(code) if code else None)
    return None, None


def upstream_wait(seconds: float | None) -> float | None:
    """An upstream's wait as a cooldown takes it: None unless a finite number, at most
    MAX_UPSTREAM_WAIT_SECONDS, never negative."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_UPSTREAM_WAIT_SECONDS)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date), at most
    MAX_UPSTREAM_WAIT_SECONDS; None for anything else (`inf`, `nan`, `1e400`, a date out of
    range, text)."""
    if not value or len(value) > MAX_RETRY_AFTER_CHARS:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        try:
            seconds = email.utils.mktime_tz(parsed) - time.time()
        except (OverflowError, ValueError):
            return None
    return upstream_wait(seconds)


def _not_connected(err: BaseException) -> str:
    """Why a connection was not made, in words (never the address: errors reach clients)."""
    cause = err.__cause__ or err.__context__
    if isinstance(cause, ConnectionRefusedError):
        return "the connection was refused"
    if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "the upstream's network is unreachable"
    return "could not connect"


def translate(err: BaseException, label: str) -> UpstreamError:
    """The one place a requests/urllib3 failure becomes a proxy error (no URLs, no keys)."""
    reason = err
    if isinstance(err, requests.RequestException) and err.args:
        inner = err.args[0]
        if isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
            reason = inner.reason
        elif isinstance(inner, BaseException):
            reason = inner
    # urllib3's NewConnectionError (refused, unreachable, a name that does not resolve) is a
    # ConnectTimeoutError too, for old callers: told apart first.
    if isinstance(reason, urllib3.exceptions.NameResolutionError):
        return UpstreamError(f"{label}: the upstream's host name does not resolve")
    if isinstance(reason, urllib3.exceptions.NewConnectionError):
        return UpstreamError(f"{label}: {_not_connected(reason)}")
    if isinstance(err, requests.ConnectTimeout) or isinstance(
        reason, urllib3.exceptions.ConnectTimeoutError
    ):
        return UpstreamError(f"{label}: connecting timed out")
    if isinstance(err, requests.ReadTimeout) or isinstance(
        reason, urllib3.exceptions.ReadTimeoutError | TimeoutError
    ):
        return UpstreamTimeoutError(f"{label}: no data within the read timeout")
    if isinstance(err, requests.exceptions.SSLError) or isinstance(
        reason, urllib3.exceptions.SSLError
    ):
        return UpstreamError(f"{label}: TLS handshake failed")
    if isinstance(err, requests.exceptions.ChunkedEncodingError) or isinstance(
        reason, urllib3.exceptions.ProtocolError | urllib3.exceptions.IncompleteRead
    ):
        return UpstreamError(f"{label}: the connection broke off mid-answer")
    return UpstreamError(f"{label}: connection failed")


def failure_chain(err: BaseException, depth: int = 6) -> str:
    """The classes of a failure and what it wraps, for the log: `ConnectionError <
    ProtocolError < RemoteDisconnected` tells a refused connection from a dropped one. Class
    names only: the messages may hold the upstream's URL."""
    names: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen and len(names) < depth:
        seen.add(id(current))
        names.append(type(current).__name__)
        inner = getattr(current, "reason", None)
        if not isinstance(inner, BaseException):
            arg = current.args[0] if current.args else None
            inner = arg if isinstance(arg, BaseException) else None
        current = inner or current.__cause__ or current.__context__
    return " < ".join(names)


class UpstreamPool:
    """Sessions per endpoint origin, each with a retrying, thread-sized connection pool."""

    def __init__(self, retry: RetryConfig, pool_size: int) -> None:
        self.retry = retry
        self.pool_size = max(1, pool_size)
        self._sessions: dict[str, requests.Session] = {}
        # The shortest idle limit any deployment on an origin asked for (None: no limit).
        self._idle_limits: dict[str, float] = {}
        # Origins by URL: splitting the same few URLs again on every request costs.
        self._keys: dict[str, str] = {}
        self._templates = PreparedTemplates(MAX_TEMPLATES)
        # When each origin last handed out its session: one idle past its limit closes its
        # pooled connections before reuse (the watchdog's sweep may be up to a second away).
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()
        # The watchdog thread closes idle connections (`close_idle`) while traffic flows.
        watchdog.WATCHDOG.every(self.close_idle)
        # Once a burst's request threads have ended, the connections only they could use go.
        on_threads_settled(self.close_surplus)
        # Answers' headers parsed without the email package (the same messages, faster), and
        # each request target percent-encoded once.
        http_client.install()
        remember_targets()

    def session(self, url: str, idle_timeout: float | None = None) -> requests.Session:
        """The endpoint's session; its pooled connections are closed once idle `idle_timeout`."""
        key = self._keys.get(url)
        if key is None:
            parts = urlsplit(url)
            key = f"{parts.scheme}://{parts.netloc}"
            if len(self._keys) < MAX_TEMPLATES:
                self._keys[url] = key
        session = self._sessions.get(key)
        limit = self._idle_limits.get(key)
        if session is None or (idle_timeout and (limit is None or idle_timeout < limit)):
            with self._lock:
                session = self._sessions.get(key)
                if session is None:
                    session = self._new_session()
                    self._sessions[key] = session
                limit = self._idle_limits.get(key)
                if idle_timeout and (limit is None or idle_timeout < limit):
                    self._idle_limits[key] = idle_timeout
                    limit = idle_timeout
        if limit is not None:
            now = time.monotonic()
            last = self._last_used.get(key)
            self._last_used[key] = now
            if last is not None and now - last >= limit:
                # The whole origin sat idle past its limit: no pooled connection may be reused.
                for manager in pool_managers(session):
                    close_idle(manager, limit, now)
        return session

    def close_idle(self, now: float | None = None) -> int:
        """Close every pooled connection idle past its origin's limit; how many were closed.

        Run by the watchdog thread about once a second: a pool reuses its most recently used
        connection first, so under steady traffic the others would otherwise idle for ever
        (holding a socket each, and possibly dropped by the upstream meanwhile).
        """
        with self._lock:
            sessions = [
                (session, self._idle_limits[key])
                for key, session in self._sessions.items()
                if key in self._idle_limits
            ]
        closed = 0
        for session, limit in sessions:
            for manager in pool_managers(session):
                closed += close_idle(manager, limit, now)
        return closed

    def close_surplus(self, threads: int) -> int:
        """Close each origin's pooled connections beyond what `threads` request threads can use
        at once (at least KEEP_IDLE are kept, the most recently used); how many were closed.

        Run once a wave of ending request threads has settled (`on_threads_settled`), before
        the heap trim: a burst of 500 streams left 500 pooled connections a worker, each a
        socket, its buffers and its objects, until their idle timeout (90 s by default). Go's
        HTTP client, which the Go ai-proxy uses, keeps 2 idle connections per host at all times.
        """
        with self._lock:
            sessions = list(self._sessions.values())
        keep = max(threads, KEEP_IDLE)
        return sum(
            close_surplus(manager, keep)
            for session in sessions
            for manager in pool_managers(session)
        )

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # No proxies, .netrc or CA paths from the environment: keys go only where configured.
        session.trust_env = False
        adapter = DirectAdapter(
            pool_connections=1, pool_maxsize=self.pool_size, max_retries=make_retry(self.retry)
        )
        # Connections report to the watchdog, so no wait on an upstream outlives its deadline.
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        for manager in pool_managers(session):
            watchdog.install(manager)
        session.headers.clear()
        # Cookies upstreams set are not kept: one client's must never go out with another's.
        session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        return session

    def send(
        self,
        method: str,
        url: str,
        *,
        label: str,
        headers: Mapping[str, str],
        body: bytes | None = None,
        timeout: tuple[float, float],
        params: Mapping[str, str] | None = None,
        verify: bool | str = True,
        idle_timeout: float | None = None,
    ) -> requests.Response:
        """Send one request (retried per `retry:`), raising the proxy's error for any failure.

        The body is not read here: callers stream it (`read_chunks`) or read it (`read_json`),
        and an error answer is read only as far as its message needs.
        """
        all_headers = {"User-Agent": USER_AGENT, **headers}
        tracing.inject(all_headers)
        with watchdog.sending() as watches:
            try:
                session = self.session(url, idle_timeout)
                request = self._templates.prepare(session, method, url, params, all_headers, body)
                check = _before_sending.get()
                if check is not None:
                    _before_sending.set(None)
                    check()
                response = send_prepared(session, request, timeout, verify)
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
                for watch in watches:
                    # Cut by the watchdog: past the deadline, or nobody waiting any more.
                    watch.check(label)
                logger.warning("upstream %s failed: %s", label, failure_chain(err))
                raise translate(err, label) from err
        if watches:
            watches[-1].raw = response.raw
            response.ai_proxy_watch = watches[-1]
        if response.status_code >= 300:
            raise status_error(response, label, _secrets(all_headers))
        return response

    def connections(self) -> dict[str, int]:
        """Upstream connections of this worker: checked out now (`in_use`) and pooled idle."""
        with self._lock:
            sessions = list(self._sessions.values())
        managers = [manager for session in sessions for manager in pool_managers(session)]
        counts = [pool_counts(manager) for manager in managers]
        return {
            "in_use": sum(count.in_use for count in counts),
            "idle": sum(count.idle for count in counts),
        }

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()


def send_prepared(
    session: requests.Session,
    request: requests.PreparedRequest,
    timeout: tuple[float, float],
    verify: bool | str,
) -> requests.Response:
    """`session.send(request, stream=True, allow_redirects=False)` through the session's adapter.

    For the proxy's sessions (no hooks, no proxies from the environment, cookies never kept,
    redirects not followed), Session.send adds only work whose result is thrown away: the
    proxies resolved from the URL, upstream cookies copied into a jar that refuses them, a
    redirect target worked out and never followed, the elapsed time. A request with hooks, or
    a session with a proxy, client certificate or the environment's settings, goes through
    Session.send.
    """
    if session.trust_env or session.proxies or session.cert or any(request.hooks.values()):
        return session.send(
            request, timeout=timeout, stream=True, allow_redirects=False, verify=verify
        )
    adapter = session.get_adapter(url=request.url)
    return adapter.send(request, stream=True, timeout=timeout, verify=verify, cert=None, proxies={})


def _secrets(headers: Mapping[str, str]) -> tuple[str, ...]:
    """The credentials in upstream headers, to scrub from anything an upstream echoes back."""
    found = []
    for name, value in headers.items():
        if name.lower() in SECRET_HEADERS and value:
            found.append(value.split(" ", 1)[1] if " " in value else value)
    return tuple(secret for secret in found if len(secret) >= 8)


def status_error(
    response: requests.Response, label: str, secrets: tuple[str, ...] = ()
) -> UpstreamError:
    """Map an upstream non-2xx answer to the proxy's error, reading at most a little of it."""
    status = response.status_code
    try:
        raw = response.raw.read(MAX_ERROR_BODY_BYTES, decode_content=True) if response.raw else b""
    except Exception:  # noqa: BLE001 - the body is only for the message; the status decides.
        raw = b""
    finally:
        release(response)
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    message, code = error_message(payload)
    for secret in secrets:
        if message and secret in message:
            message = message.replace(secret, REDACTED)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    error = _status_error(status, message, code, retry_after, label)
    if isinstance(error, UpstreamClientError):
        param = error_param(payload)
        if param and any(secret in param for secret in secrets):
            param = None
        error.param = param
    error.upstream_status = status
    error.upstream_retry_after = retry_after
    return error


def _status_error(status, message, code, retry_after, label) -> UpstreamError:
    if status in CLIENT_ERROR_STATUSES:
        text = safe_text(message) if message else f"the upstream rejected the request ({status})"
        too_long = code == "context_length_exceeded" or bool(
            message and _CONTEXT_RE.search(message)
        )
        return UpstreamClientError(text, status=status, code=code, context_length=too_long)
    if status in (401, 403):
        return UpstreamError(f"{label}: the provider refused the proxy's credentials ({status})")
    detail = ""
    if message:
        # Logged for operators, not relayed: a provider's own failure text can echo a key.
        logger.warning("upstream %s answered %s: %s", label, status, safe_text(message))
        behind = _PROVIDER_RE.search(message)
        if behind:
            detail = f" {safe_text(behind.group(0))}"
    return UpstreamError(f"{label}: upstream answered {status}{detail}", retry_after=retry_after)


def watch_of(response: requests.Response) -> watchdog.Watch | None:
    """The watchdog's watch over an upstream answer, if it is read for a client request."""
    return getattr(response, "ai_proxy_watch", None)


def read_chunks(response: requests.Response, label: str) -> Iterator[bytes]:
    """Yield upstream bytes as soon as each read returns them (chunked or not).

    Every read is bounded: the request's deadline is checked after each one (an upstream that
    sends only keep-alives or drips bytes still runs out of time), and the watchdog cuts a read
    that waits past it, or whose client has left.
    """
    raw = response.raw
    watch = watch_of(response)
    try:
        while True:
            data = raw.read1(READ_SIZE)
            if watch is not None:
                watch.check(label)
            if not data:
                return
            yield data
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
        if watch is not None:
            watch.check(label)
        raise translate(err, label) from err


def release(response: requests.Response, reuse: bool = False) -> None:
    """Close an upstream answer; with `reuse`, first try to give its connection back to the pool.

    A stream is over for the proxy at its last event (`[DONE]`, `message_stop`), a few bytes
    before its HTTP body is (the chunked terminator). Reading those bytes, if they come within
    DRAIN_SECONDS and MAX_DRAIN_BYTES, lets urllib3 pool the connection, so the next stream to
    that upstream skips a TCP and TLS handshake. Anything else closes the connection.
    """
    watch = watch_of(response)
    if watch is not None:
        # Before the connection can go back to the pool, where it may serve another request.
        watchdog.WATCHDOG.discard(watch)
    if reuse:
        drain(response.raw, DRAIN_SECONDS, MAX_DRAIN_BYTES)
    response.close()


def read_bytes(response: requests.Response, label: str, limit: int) -> bytearray:
    """A whole binary answer, at most `limit` bytes (more is a failure, not a truncation).

    One growing buffer, not a list of pieces joined at the end: the answer is held once.
    """
    buffer = bytearray()
    try:
        for chunk in read_chunks(response, label):
            if len(buffer) + len(chunk) > limit:
                raise UpstreamError(f"{label}: the upstream answer is larger than {limit} bytes")
            buffer += chunk
    finally:
        release(response)
    return buffer


def body_error(answer: dict, label: str) -> UpstreamError:
    """An error an upstream put in a 200 answer (OpenRouter does), mapped by its own code."""
    message, code = error_message(answer)
    err = answer.get("error")
    status = err.get("code") if isinstance(err, dict) else None
    text = safe_text(message or "unknown error")
    if isinstance(status, int) and status in CLIENT_ERROR_STATUSES:
        return UpstreamClientError(text, status=status, code=code)
    if status in (401, 403):
        # The proxy's key was refused: what the provider said about it is not the client's.
        return UpstreamError(f"{label}: the provider refused the proxy's credentials ({status})")
    return UpstreamError(f"{label}: the upstream failed: {text}")


def read_json(response: requests.Response, label: str) -> object:
    """The whole body of a non-streamed answer as JSON; garbage is a retryable failure."""
    content = read_bytes(response, label, MAX_ANSWER_BYTES)
    try:
        # Decoded, then the bytes dropped before parsing: at most two copies of a large
        # answer are held at once (json.loads would keep the bytes while it parses).
        text = content.decode(json.detect_encoding(content), "surrogatepass")
        del content
        return json.loads(text)
    except ValueError as err:
        raise UpstreamError(f"{label}: the upstream answer is not valid JSON") from err
