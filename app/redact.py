"""The one secret scrubber: every error message a client sees and every log record goes through it.

Configured secrets (provider keys, client, admin and metrics tokens, credentials in URLs) are
registered when an app's state is built; `scrub` removes them whole and any long part of them,
then anything shaped like a URL, an Authorization value or a provider key, configured or not.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

REDACTED = "<redacted>"
URL_MARK = "<url>"
# Any run of this many characters of a secret counts as the secret: a provider that echoes a
# truncated or partly masked key (`sk-abc...xyz12345`, its last 12 characters) leaks that much.
PART_CHARS = 8
# Parts looked up first, every PROBE_STEP characters (PROBE_CHARS + PROBE_STEP - 1 must not
# exceed PART_CHARS, so every window of PART_CHARS characters holds one).
PROBE_CHARS = 5
PROBE_STEP = 4
# Scrubbed short strings remembered per set of secrets.
MAX_CACHED = 4096
MAX_CACHED_CHARS = 256
# Shorter secrets are scrubbed only whole; below this they are too likely to be ordinary words.
MIN_SECRET_CHARS = 6
# Longest letters-only part of a secret still taken for a word (see _word_parts).
MAX_WORD_CHARS = 15
# Secrets learned at run time (OAuth access tokens) kept for scrubbing, newest first.
MAX_TRANSIENT = 64
# Log record fields that are ids the proxy makes or checks itself: shape rules would mangle them
# (a request id is 32 hex digits), so only configured secrets are scrubbed from them.
ID_FIELDS = frozenset({"request_id", "trace_id", "span_id", "{x-request-id}o", "{x-request-id}i"})
# gunicorn's own lines whose arguments are its own (the address it listens at): only
# configured secrets are scrubbed from them.
OWN_MESSAGES = frozenset({"Listening at: %s (%s)", "Listening at: %s"})
# Words inside a secret: lower-case, Title-case or UPPER-case runs of letters.
_WORD_RE = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])")
# Header and query names whose values are credentials.
_SECRET_NAME_RE = re.compile(
    r"authorization|api[-_]?key|apikey|token|secret|password|passwd|credential|cookie|"
    r"auth|^key$|^sig$|^signature$|^code$",
    re.IGNORECASE,
)
# Lower-casing only ASCII keeps every offset: matching is case-blind and maps back exactly.
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_RUN_RE = re.compile(rf"\S{{{PART_CHARS},}}")

# Every pattern that starts with a repeated class is anchored at the start of a run (a
# look-behind), so no input makes one rescan a run from each of its characters.
_URL_RE = re.compile(r"\b[a-z][a-z0-9+.\-]{1,20}://\S+", re.IGNORECASE)
# `user:password@host` without a scheme (connection strings in driver errors).
_USERINFO_RE = re.compile(r"(?<![^\s:/@'\"<>])[^\s:/@'\"<>]+:[^\s:/@'\"<>]+@(?=[A-Za-z0-9\[])")
# A credential named in the text: `api_key=...`, `"x-api-key": "..."`, `Authorization: Bearer ...`.
_ASSIGNED_RE = re.compile(
    r"(?i)\b((?:x-goog-|x-)?api[ _-]?key|apikey|access[ _-]?token|refresh[ _-]?token|"
    r"id[ _-]?token|auth[ _-]?token|client[ _-]?secret|secret[ _-]?key|password|passwd|"
    r"(?:proxy-)?authorization|credentials?|token|secret)"
    r"([\"']?\s*[:=]\s*[\"']?)((?:bearer|basic)\s+)?([^\s\"',;&)}\]]+)"
)
_SCHEME_RE = re.compile(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9\-._~+/]{8,}=*)")
_QUERY_RE = re.compile(
    r"(?i)([?&](?:key|api[_-]?key|token|access_token|sig|signature|secret|password|auth)=)"
    r"[^&\s#\"']+"
)
# Keys by their provider's prefix: OpenAI and the many that copied it, Anthropic, Groq, xAI,
# Hugging Face, Together, Replicate, NVIDIA, GitHub, GitLab, Perplexity, Cerebras, Fireworks,
# Stripe-style, AWS, Google OAuth and Google API keys.
_PREFIXED_RE = re.compile(
    r"(?<![A-Za-z0-9_])(?:"
    r"(?:sk-ant-|sk-proj-|sk-or-v1-|sk-svcacct-|sk-|sk_|pk_|rk_|gsk_|xai-|hf_|"
    r"tgp_v1_|r8_|nvapi-|ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|glpat-|pplx-|csk-|fw_|"
    r"ya29\.)(?P<tail>[A-Za-z0-9_\-.]{10,})"
    r"|key-[A-Za-z0-9_\-]{20,}"
    r"|AIza[A-Za-z0-9_\-]{20,}"
    r"|AKIA[A-Z0-9]{12,}"
    r")"
)
_JWT_RE = re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]*)?")
# A key with its middle masked: `sk-abc***wxyz`, `sk-abc...wxyz`.
_MASKED_RE = re.compile(
    r"(?<![A-Za-z0-9_\-*])[A-Za-z0-9_\-]*\*{3,}[A-Za-z0-9_\-]+"
    r"|(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]+\*{3,}"
    r"|(?<![A-Za-z0-9_\-])(?:sk|pk|rk|gsk|hf|xai|tgp|nvapi|r8|ghp|key)[-_][A-Za-z0-9_\-]*"
    r"(?:\.{3}|\u2026)[A-Za-z0-9_\-]*"
)
# Long unseparated runs of letters and digits, or of letters in random case (Mistral, Cohere,
# Together's hex keys and most keys without a prefix). Model ids never have one: their parts
# are short and separated.
_RUN_OF_KEY_RE = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9]{20,}(?![A-Za-z0-9])")
_DIGIT_RE = re.compile(r"[0-9]")
_LETTER_RE = re.compile(r"[A-Za-z]")


def _credential_like(value: str) -> bool:
    """Whether a value after `Bearer` or `api_key=` is a credential rather than a word.

    "Invalid bearer authentication" and "password: required" keep their words; a value with a
    digit or a symbol, or a long run of letters, is taken for a credential.
    """
    if len(value) < MIN_SECRET_CHARS:
        return False
    return len(value) >= 20 or not value.isalpha()


def _assigned(match: re.Match) -> str:
    name, sep, scheme, value = match.groups()
    if not _credential_like(value):
        return match.group(0)
    return f"{name}{sep}{scheme or ''}{REDACTED}"


def _scheme(match: re.Match) -> str:
    if not _credential_like(match.group(3)):
        return match.group(0)
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def _prefixed(match: re.Match) -> str:
    tail = match.group("tail")
    # `hf_transfer_enabled` is a name; keys have digits or capitals, or are long.
    if tail is None or len(tail) >= 24 or not (tail.islower() or tail.isupper()):
        return REDACTED
    return match.group(0) if not _DIGIT_RE.search(tail) else REDACTED


def _key_run(match: re.Match) -> str:
    run = match.group(0)
    if _DIGIT_RE.search(run) and _LETTER_RE.search(run):
        return REDACTED
    # Letters only: random ones switch case every few characters, CamelCase words seldom
    # ("InvalidParameterValueException" switches 7 times in 30).
    switches = sum(1 for a, b in zip(run, run[1:], strict=False) if a.isupper() != b.isupper())
    return REDACTED if switches * 3 >= len(run) else run


def scrub_shapes(text: str) -> str:
    """Remove what looks like a secret whatever it is: URLs, credentials, key-shaped strings."""
    # The `in` checks skip rules that cannot match (most log lines have no URL, no `@`).
    if "://" in text:
        text = _URL_RE.sub(URL_MARK, text)
    if "@" in text:
        text = _USERINFO_RE.sub(REDACTED + "@", text)
    if "=" in text:
        text = _QUERY_RE.sub(lambda m: m.group(1) + REDACTED, text)
    if "=" in text or ":" in text:
        text = _ASSIGNED_RE.sub(_assigned, text)
    text = _SCHEME_RE.sub(_scheme, text)
    if "eyJ" in text:
        text = _JWT_RE.sub(REDACTED, text)
    text = _PREFIXED_RE.sub(_prefixed, text)
    if "**" in text or ".." in text or "\u2026" in text:
        text = _MASKED_RE.sub(REDACTED, text)
    return _RUN_OF_KEY_RE.sub(_key_run, text)


class ClientWords:
    """What a client sent with its request (its path and body), for scrubbing what an upstream
    says back to it: an upstream often repeats the client's words (`Unknown parameter: 'x'`),
    and taking out the parts of them that are part of a secret would tell the client which of
    its words those are, one guess at a time. Lower-cased only when first needed (an upstream's
    text with a part of a secret in it)."""

    __slots__ = ("_lower", "body", "path")

    def __init__(self, path: str, body: bytes = b"") -> None:
        self.path, self.body, self._lower = path, body, None

    @property
    def lower(self) -> str:
        if self._lower is None:
            text = self.path + "\n" + self.body.decode("utf-8", "replace")
            self._lower = text.translate(_ASCII_LOWER)
        return self._lower


# This request's ClientWords (set when it begins; its body once it is read).
CLIENT_WORDS: ContextVar[ClientWords | None] = ContextVar("ai_proxy_client_words", default=None)


class _Index(NamedTuple):
    """What scrubbing looks up, swapped in whole when a secret is registered."""

    grams: frozenset[str] = frozenset()  # every PART_CHARS-long part, ASCII lower-cased
    probes: frozenset[str] = frozenset()  # every PROBE_CHARS-long part (see scrub_known)
    short: tuple[str, ...] = ()  # secrets too short to have parts: matched whole
    words: frozenset[str] = frozenset()  # word-like parts (see _word_parts)
    cache: dict = {}  # noqa: RUF012 - text -> scrubbed text, for this index only
    whole: tuple[str, ...] = ()  # every secret, longest first (see scrub_reflected)


class Redactor:
    """The secrets this process knows, and the scrubbing of text against them.

    Readers never lock: registering builds a new index and swaps it in.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._configured: set[str] = set()
        self._transient: OrderedDict[str, None] = OrderedDict()
        self._index = _Index()

    def register(self, secrets: Iterable[str | None]) -> None:
        """Remember secrets for good (the configuration's)."""
        found = _pieces(secrets)
        with self._lock:
            if found - self._configured:
                self._configured |= found
                self._rebuild()

    def register_transient(self, secret: str | None) -> None:
        """Remember a secret learned at run time; only the newest MAX_TRANSIENT are kept."""
        found = _pieces([secret])
        with self._lock:
            if all(piece in self._transient for piece in found):
                return
            for piece in found:
                self._transient[piece] = None
                self._transient.move_to_end(piece)
            while len(self._transient) > MAX_TRANSIENT:
                self._transient.popitem(last=False)
            self._rebuild()

    def forget_all(self) -> None:
        """Drop every secret (for tests)."""
        with self._lock:
            self._configured.clear()
            self._transient.clear()
            self._rebuild()

    def _rebuild(self) -> None:
        secrets = (*self._configured, *self._transient)
        grams: set[str] = set()
        probes: set[str] = set()
        short = []
        for secret in secrets:
            if len(secret) < PART_CHARS:
                short.append(secret)
                continue
            lower = secret.translate(_ASCII_LOWER)
            grams.update(lower[i : i + PART_CHARS] for i in range(len(lower) - PART_CHARS + 1))
            probes.update(lower[i : i + PROBE_CHARS] for i in range(len(lower) - PROBE_CHARS + 1))
        self._index = _Index(
            frozenset(grams),
            frozenset(probes),
            # Longest first, so a secret that contains another is removed whole.
            tuple(sorted(short, key=len, reverse=True)),
            _word_parts(secrets),
            {},
            tuple(sorted(secrets, key=len, reverse=True)),
        )

    def scrub_known(self, text: str, own: ClientWords | None = None) -> str:
        """Remove each registered secret and any run of PART_CHARS or more characters of one;
        `own`: a client's own words, whose parts are never taken out (see ClientWords)."""
        grams, probes, short, words, _, _ = self._index
        if len(text) < MIN_SECRET_CHARS or not (grams or short):
            return text
        for secret in short:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if not grams or len(text) < PART_CHARS:
            return text
        lower = text.translate(_ASCII_LOWER)
        # Every PART_CHARS-long window of a run holds a PROBE_CHARS-long part starting at a
        # multiple of PROBE_STEP from the run's start: looking those up finds every window that
        # may match at a quarter of the cost; only the windows around a hit are checked.
        starts: set[int] = set()
        for run in _RUN_RE.finditer(lower):
            start, end = run.span()
            for probe in range(start, end - PROBE_CHARS + 1, PROBE_STEP):
                if lower[probe : probe + PROBE_CHARS] in probes:
                    first = max(start, probe + PROBE_CHARS - PART_CHARS)
                    starts.update(range(first, min(probe, end - PART_CHARS) + 1))
        spans: list[list[int]] = []
        for i in sorted(starts):
            window = lower[i : i + PART_CHARS]
            if window in grams and not (own is not None and window in own.lower):
                if spans and i <= spans[-1][1]:
                    spans[-1][1] = i + PART_CHARS
                else:
                    spans.append([i, i + PART_CHARS])
        pieces, last = [], 0
        for start, end in spans:
            part = lower[start:end]
            if words and part.isalpha() and any(part in word for word in words):
                # "upstream" of a key written as `sk-upstream-secret`: a word, not a leak.
                continue
            pieces.append(text[last:start])
            pieces.append(REDACTED)
            last = end
        if not pieces:
            return text
        pieces.append(text[last:])
        return "".join(pieces)

    def scrub(self, text: str, own: ClientWords | None = None) -> str:
        """Text safe for a client or a log line: no known secret, nothing shaped like one.
        `own`: see scrub_known."""
        if not text:
            return text
        if own is not None:
            return self.scrub_known(scrub_shapes(text), own)
        cache = self._index.cache
        cached = cache.get(text)
        if cached is not None:
            return cached
        # Shapes first: a known secret's part next to an unknown key must not split the key's
        # shape. What a shape leaves of a known secret is still a run of it, found after.
        scrubbed = self.scrub_known(scrub_shapes(text))
        if len(text) <= MAX_CACHED_CHARS:
            # Log fields repeat (methods, paths, model and token names): each is scrubbed once.
            if len(cache) >= MAX_CACHED:
                cache.clear()
            cache[text] = scrubbed
        return scrubbed

    def scrub_reflected(self, text: str) -> str:
        """Text for a client's answer, which may hold the client's own words (a path, a model
        name): known secrets come out only whole, and anything shaped like a secret.

        Taking out parts of secrets here would answer, for any word a client sends, whether it
        is part of one: a client could then find a key piece by piece. What an upstream said
        (which may quote part of a key) had its parts taken out when it was read
        (app.upstream.safe_text)."""
        if not text:
            return text
        text = scrub_shapes(text)
        for secret in self._index.whole:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def scrub_answer(self, value: object, depth: int = 0) -> object:
        """`scrub_reflected` applied to the strings of an answer's body (an error's)."""
        if isinstance(value, str):
            return self.scrub_reflected(value)
        if depth > 8:
            return value
        if isinstance(value, Mapping):
            return {k: self.scrub_answer(v, depth + 1) for k, v in value.items()}
        if type(value) in (list, tuple):
            return type(value)(self.scrub_answer(v, depth + 1) for v in value)
        return value

    def scrub_value(self, value: object, shapes: bool = True, depth: int = 0) -> object:
        """`scrub` applied to the strings in a value, containers included (log `extra=` data)."""
        kind = type(value)
        if kind is str:
            return self.scrub(value) if shapes else self.scrub_known(value)
        # Most log fields are plain numbers or None: answered before the ABC checks below.
        if kind is int or kind is float or kind is bool or value is None:
            return value
        if isinstance(value, str):
            return self.scrub(value) if shapes else self.scrub_known(value)
        if depth > 4:
            return value
        if isinstance(value, Mapping):
            return {k: self.scrub_value(v, shapes, depth + 1) for k, v in value.items()}
        if type(value) in (list, tuple):
            return type(value)(self.scrub_value(v, shapes, depth + 1) for v in value)
        if value is None or isinstance(value, int | float):
            return value
        # Any other object is written as its str() (an exception, a URL object): if that holds
        # a secret, the scrubbed text goes in its place.
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - an object that cannot be shown shows nothing.
            return "<unprintable>"
        scrubbed = self.scrub(text) if shapes else self.scrub_known(text)
        return value if scrubbed == text else scrubbed


def _word_parts(secrets: Iterable[str]) -> frozenset[str]:
    """The parts of hand-written secrets that are words (`upstream` in `sk-upstream-secret` or
    `AIzaSyUpstreamSecretKey0123`).

    A part of a secret found in text is a leak when it is random; when it is a word between
    separators or case changes it is more likely the proxy's own text ("upstream_error"). A
    secret that is one word, or a long run of letters, is scrubbed in full all the same.
    """
    whole = {secret.translate(_ASCII_LOWER) for secret in secrets}
    words = set()
    for secret in secrets:
        for part in _WORD_RE.findall(secret):
            lower = part.translate(_ASCII_LOWER)
            if PART_CHARS <= len(part) <= MAX_WORD_CHARS and lower not in whole:
                words.add(lower)
    return frozenset(words)


def _pieces(secrets: Iterable[str | None]) -> set[str]:
    """The strings to scrub for some secrets: each whitespace-separated part long enough."""
    found: set[str] = set()
    for secret in secrets:
        if not isinstance(secret, str):
            continue
        for piece in secret.split():
            if len(piece) >= MIN_SECRET_CHARS:
                found.add(piece)
    return found


def url_secrets(url: str | None) -> list[str]:
    """The credentials in a URL: `user:password`, the password, and secret-named query values."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        found = []
        if parts.password:
            found += [parts.password, unquote(parts.password)]
            if parts.username:
                # Not the user name alone: `default` or `admin` would be scrubbed everywhere.
                pair = f"{unquote(parts.username)}:{unquote(parts.password)}"
                # Sent as `Authorization: Basic <base64 of user:password>`.
                found += [f"{parts.username}:{parts.password}", b64encode_text(pair)]
        elif parts.username and "@" in parts.netloc:
            # `redis://secret@host`: a lone user part is the password for some schemes.
            found.append(unquote(parts.username))
        for name, value in parse_qsl(parts.query, keep_blank_values=False):
            if _SECRET_NAME_RE.search(name):
                found.append(value)
        return found
    except ValueError:
        return []


def b64encode_text(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def header_secrets(headers: Mapping[str, str] | None) -> list[str]:
    """The values of credential headers (`Authorization`, `X-Api-Key`, ...) in a header map."""
    found = []
    for name, value in (headers or {}).items():
        if isinstance(value, str) and _SECRET_NAME_RE.search(str(name)):
            scheme, _, credential = value.strip().partition(" ")
            # `Bearer <key>`: the key, not the scheme (else every "Bearer" would go).
            found.append(credential.strip() if credential and scheme.isalpha() else value)
    return found


def credential_forms(token: str | None) -> list[str]:
    """A token and what it may be sent as: `id:secret` and its Base64 form, or the reverse."""
    if not token:
        return []
    token = token.strip()
    found = [token]
    if ":" in token:
        found += token.split(":", 1)
        found.append(b64encode_text(token))
    else:
        try:
            decoded = base64.b64decode(token, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            decoded = ""
        if ":" in decoded and decoded.isprintable():
            found += [decoded, *decoded.split(":", 1)]
    return found


class ScrubFilter(logging.Filter):
    """Scrubs a log record's message, arguments, `extra=` fields and exception text in place."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        super().__init__()
        self.redactor = redactor or REDACTOR

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_ai_proxy_scrubbed", False):
            return True
        redactor = self.redactor
        args = record.args
        if isinstance(args, MutableMapping):
            # gunicorn's access records: formatters read the atoms by name, through the
            # mapping's own class (gunicorn's answers "-" for a missing one), so it is kept.
            for key, value in list(args.items()):
                args[key] = redactor.scrub_value(value, shapes=key not in ID_FIELDS)
        elif isinstance(args, Mapping):
            record.args = {
                key: redactor.scrub_value(value, shapes=key not in ID_FIELDS)
                for key, value in args.items()
            }
        elif record.msg in OWN_MESSAGES:
            record.args = tuple(redactor.scrub_value(arg, shapes=False) for arg in args or ())
        else:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a bad format string is logging's to report.
                message = None
            if message is not None:
                scrubbed = redactor.scrub(message)
                if scrubbed != message:
                    record.msg, record.args = scrubbed, ()
        for key, value in list(vars(record).items()):
            if key in _STANDARD or key.startswith("_"):
                continue
            record.__dict__[key] = redactor.scrub_value(value, shapes=key not in ID_FIELDS)
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redactor.scrub(_FORMATTER.formatException(record.exc_info))
            # Formatters that render exc_info themselves would show it unscrubbed.
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redactor.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.scrub(record.stack_info)
        record._ai_proxy_scrubbed = True
        return True


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_FORMATTER = logging.Formatter()

# The process's one redactor: errors and log records of every app in the process use it.
REDACTOR = Redactor()
SCRUB_FILTER = ScrubFilter(REDACTOR)


def scrub(text: str) -> str:
    """Text safe for a client or a log line (see Redactor.scrub)."""
    return REDACTOR.scrub(text)


def register(secrets: Iterable[str | None]) -> None:
    REDACTOR.register(secrets)


def install_filter(*targets: logging.Logger | logging.Handler) -> None:
    """Put the scrub filter on loggers or handlers (once each)."""
    for target in targets:
        if SCRUB_FILTER not in target.filters:
            target.addFilter(SCRUB_FILTER)


def install_on_loggers(package: str) -> None:
    """Put the scrub filter on the proxy's own loggers and the HTTP libraries'.

    Handlers the proxy sets up carry it too (app.logs); these cover a host app that mounts the
    proxy and logs through handlers of its own.
    """
    prefixes = (package, "ai_proxy", "urllib3", "requests")
    names = [
        name
        for name in list(logging.Logger.manager.loggerDict)
        if any(name == p or name.startswith(p + ".") for p in prefixes)
    ]
    for name in dict.fromkeys([*prefixes, *names]):
        install_filter(logging.getLogger(name))
