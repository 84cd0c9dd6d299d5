"""Client authentication: token extraction, constant-time checks and per-token model allow-lists."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from .config import TokenConfig
from .errors import AuthenticationError, PermissionDeniedError
from .model_ids import normalised

MAX_TOKEN_LENGTH = 4096
ANONYMOUS = TokenConfig(name="anonymous", sha256="")
TOKEN_HEADERS = ("x-api-key", "api-key", "x-goog-api-key")
# HTTP's own white space only: `str.strip()` would also take \x85 and \xa0, which are bytes of
# a UTF-8 token as WSGI hands it over (latin-1-decoded), and so break non-ASCII tokens.
HTTP_SPACE = " \t\r\n"


def extract_token(headers: Mapping[str, str]) -> str | None:
    """The token from `Authorization: Bearer`, `x-api-key`, `api-key` or `x-goog-api-key`."""
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.strip(HTTP_SPACE).partition(" ")
        if scheme.lower() == "bearer" and value.strip(HTTP_SPACE):
            return value.strip(HTTP_SPACE)
    for name in TOKEN_HEADERS:
        value = headers.get(name)
        if value and value.strip(HTTP_SPACE):
            return value.strip(HTTP_SPACE)
    return None


def is_loopback_host(host: str) -> bool:
    """True for a bind address only this machine can reach."""
    host = host.strip().strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback_host_header(value: str | None) -> bool:
    """True for a `Host` header naming this machine: `localhost` or a loopback address
    (127.0.0.0/8, ::1), with or without a port. `0.0.0.0` is not loopback, and names under
    `.localhost` are not taken either: not every resolver keeps them local, and a name a DNS
    server answers for is what a DNS rebinding attack needs.
    """
    if not value:
        return False
    host = value.strip().lower()
    port = ""
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return False
        port = port[1:] if port else ""
        if port and not port.isdigit():
            return False
        return _loopback_address(name, ipv6=True)
    if host.count(":") > 1:
        return _loopback_address(host, ipv6=True)  # a bare IPv6 address, as some clients send
    name, colon, port = host.partition(":")
    if colon and not (port.isdigit() and len(port) <= 5):
        return False
    if name in ("localhost", "localhost."):
        return True
    return _loopback_address(name, ipv6=False)


JSON_METHODS = ("POST", "PUT", "PATCH")


def _loopback_address(text: str, ipv6: bool) -> bool:
    try:
        address = ipaddress.IPv6Address(text) if ipv6 else ipaddress.IPv4Address(text)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def is_json_type(content_type: str | None) -> bool:
    """`application/json` or a `+json` type, parameters aside."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


FORM_TYPE = "application/x-www-form-urlencoded"


def check_local_request(
    headers: Mapping[str, str],
    method: str,
    scheme: str,
    cors_origins: Iterable[str],
    form: bool = False,
) -> None:
    """With no client token, only this machine's own clients may call: refuse (401) a `Host`
    that is not loopback (DNS rebinding), a cross-site browser request (an `Origin` that is not
    in `cors_origins` nor this server itself), and a body-carrying request that is not JSON (a
    browser sends `text/plain` or form posts cross-site without asking first). `form`: the
    status page's sign-in and sign-out, whose forms carry a CSRF token of their own.
    """
    host = headers.get("Host")
    if not is_loopback_host_header(host):
        raise AuthenticationError(
            "No client token is configured, so only local clients may call: the Host header "
            "must be localhost or a loopback address."
        )
    origin = headers.get("Origin")
    allowed_origin = origin is not None and (
        origin in cors_origins or origin.lower() == f"{scheme}://{host}".lower()
    )
    if origin is not None and not allowed_origin:
        raise AuthenticationError(
            "No client token is configured, so cross-site browser requests are refused; "
            "add the origin to server.cors_origins or configure a client token."
        )
    fetch_site = (headers.get("Sec-Fetch-Site") or "").lower()
    if fetch_site in ("cross-site", "same-site") and not allowed_origin:
        raise AuthenticationError(
            "No client token is configured, so cross-site browser requests are refused."
        )
    if form and (headers.get("Content-Type") or "").startswith(FORM_TYPE):
        return
    if method.upper() in JSON_METHODS and not is_json_type(headers.get("Content-Type")):
        raise AuthenticationError(
            "No client token is configured, so a request body must be sent as "
            "'Content-Type: application/json'."
        )


class Authenticator:
    """Checks presented tokens against the configured SHA-256 digests in constant time."""

    def __init__(self, tokens: Iterable[TokenConfig]) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), t) for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def authenticate(
        self, headers: Mapping[str, str], remote_addr: str | None, query_key: str | None = None
    ) -> TokenConfig:
        """The token the request carries, or AuthenticationError.

        `query_key` is the Gemini API's `?key=`, taken only where a header carries none; it is
        checked exactly like a header's token.
        """
        if not self._tokens:
            # With no token configured the proxy only serves this machine (see CONTRACT 1).
            if remote_addr and is_loopback_host(remote_addr):
                return ANONYMOUS
            raise AuthenticationError("No client token is configured; only local clients may call.")
        presented = extract_token(headers)
        if presented is None and query_key and query_key.strip(HTTP_SPACE):
            presented = query_key.strip(HTTP_SPACE)
        if presented is None:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key'."
            )
        if len(presented) > MAX_TOKEN_LENGTH:
            raise AuthenticationError("Invalid API key.")
        digests = [hashlib.sha256(form).digest() for form in token_bytes(presented)]
        found = None
        for expected, token in self._tokens:
            # Every digest is compared so the time taken does not tell which one matched.
            for digest in digests:
                if hmac.compare_digest(digest, expected) and found is None:
                    found = token
        if found is None:
            raise AuthenticationError("Invalid API key.")
        return found


def token_bytes(presented: str) -> list[bytes]:
    """The byte strings a presented token may stand for; configured tokens are hashed as UTF-8.

    WSGI hands header values over as latin-1-decoded text. A client that sent the token as UTF-8
    bytes is matched by those bytes as they came; one that sent latin-1 bytes (or a value some
    server already decoded) is matched by the text encoded as UTF-8.
    """
    forms = [presented.encode("utf-8", "surrogateescape")]
    try:
        wire = presented.encode("latin-1")
    except UnicodeEncodeError:
        return forms
    if wire != forms[0]:
        forms.append(wire)
    return forms


def model_allowed(token: TokenConfig, identifier: str, is_category: bool = False) -> bool:
    """Whether the token's `models` patterns admit a public name, alias or category."""
    if is_category:
        # Categories are case-insensitive: SMALL and small are one.
        upper = identifier.upper()
        return any(p == "*" or fnmatchcase(upper, p.upper()) for p in token.models)
    # Checked on the id as written and as an upstream could read it (`a/./b`, `%2e%2e`, a
    # full-width dot): a pattern such as `cloudflare/@cf/meta/*` admits only ids under it.
    return all(
        any(p == "*" or fnmatchcase(form, p) for p in token.models)
        for form in dict.fromkeys((identifier, normalised(identifier)))
    )


def require_model(token: TokenConfig, identifier: str, is_category: bool = False) -> None:
    """Raise PermissionDeniedError unless the token may use `identifier`."""
    if not model_allowed(token, identifier, is_category):
        raise PermissionDeniedError(f"This API key may not use the model {identifier!r}.")
