"""Client authentication: token extraction, constant-time checks and per-token model allow-lists."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from app.config import TokenConfig
from app.errors import AuthenticationError, PermissionDeniedError

MAX_TOKEN_LENGTH = 4096
ANONYMOUS = TokenConfig(name="anonymous", sha256="")
TOKEN_HEADERS = ("x-api-key", "api-key", "x-goog-api-key")


def extract_token(headers: Mapping[str, str]) -> str | None:
    """The token from `Authorization: Bearer`, `x-api-key`, `api-key` or `x-goog-api-key`."""
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for name in TOKEN_HEADERS:
        value = headers.get(name)
        if value and value.strip():
            return value.strip()
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


class Authenticator:
    """Checks presented tokens against the configured SHA-256 digests in constant time."""

    def __init__(self, tokens: Iterable[TokenConfig]) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), t) for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, headers: Mapping[str, str], remote_addr: str | None) -> TokenConfig:
        """The token the request carries, or AuthenticationError."""
        if not self._tokens:
            # With no token configured the proxy only serves this machine (see CONTRACT 1).
            if remote_addr and is_loopback_host(remote_addr):
                return ANONYMOUS
            raise AuthenticationError("No client token is configured; only local clients may call.")
        presented = extract_token(headers)
        if presented is None:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key'."
            )
        if len(presented) > MAX_TOKEN_LENGTH:
            raise AuthenticationError("Invalid API key.")
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for expected, token in self._tokens:
            # Every digest is compared so the time taken does not tell which one matched.
            if hmac.compare_digest(digest, expected) and found is None:
                found = token
        if found is None:
            raise AuthenticationError("Invalid API key.")
        return found


def model_allowed(token: TokenConfig, identifier: str, is_category: bool = False) -> bool:
    """Whether the token's `models` patterns admit a public name, alias or category."""
    if is_category:
        # Categories are case-insensitive: SMALL and small are one.
        upper = identifier.upper()
        return any(p == "*" or fnmatchcase(upper, p.upper()) for p in token.models)
    return any(p == "*" or fnmatchcase(identifier, p) for p in token.models)


def require_model(token: TokenConfig, identifier: str, is_category: bool = False) -> None:
    """Raise PermissionDeniedError unless the token may use `identifier`."""
    if not model_allowed(token, identifier, is_category):
        raise PermissionDeniedError(f"This API key may not use the model {identifier!r}.")
