"""The status page's session: a signed cookie, its CSRF token, and the limit on wrong tokens.

The cookie is signed (itsdangerous, HMAC-SHA256) with a key derived from `AI_PROXY_SECRET_KEY`,
else from the admin token, so every worker and host with the same config accepts it, and a new
admin token signs every session out. It holds no secret: whether it is signed in, its CSRF token,
and a fingerprint of the admin token it was signed in with. It is `HttpOnly`, `SameSite=Strict`,
limited to the page's path, and `Secure` whenever the request came over HTTPS (gunicorn takes
`X-Forwarded-Proto` from the proxies in its `forwarded_allow_ips`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass

from flask import Response, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.strategies import FixedWindowRateLimiter

from ..blueprints.common import proxy_state
from .revoked import REVOKED

logger = logging.getLogger(__name__)

COOKIE = "ai_proxy_admin"
SESSION_SECONDS = 12 * 3600
MAX_COOKIE_CHARS = 1024
# Wrong tokens allowed per client address and minute before sign-in answers 429.
SIGN_IN_ATTEMPTS_PER_MINUTE = 5
SIGN_IN_LIMIT = RateLimitItemPerMinute(SIGN_IN_ATTEMPTS_PER_MINUTE)
KEY_LABEL = b"ai-proxy status page session v1"
# Whose wrong tokens an address has used up: the admin token's (sign-in and admin routes), or
# the metrics token's, counted apart so a misconfigured scraper never locks an operator out.
SIGN_IN_SCOPE = "admin-sign-in"
METRICS_SCOPE = "metrics-token"


@dataclass(frozen=True)
class Session:
    """What the cookie says: its CSRF token, and whether it is signed in."""

    csrf: str
    signed_in: bool = False
    # A random id, so that sign-out can revoke this session on every worker (app/statuspage/
    # revoked.py); a signed-in cookie without one is not signed in.
    sid: str = ""


def _admin_token() -> str | None:
    return proxy_state().config.admin_token


def _key(admin_token: str) -> bytes:
    secret = os.environ.get("AI_PROXY_SECRET_KEY") or admin_token
    return hmac.new(secret.encode("utf-8"), KEY_LABEL, hashlib.sha256).digest()


def _serializer(admin_token: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(
        _key(admin_token), salt="session", signer_kwargs={"digest_method": hashlib.sha256}
    )


def _fingerprint(admin_token: str) -> str:
    # Ties a session to the admin token even when AI_PROXY_SECRET_KEY signs it.
    return hmac.new(_key(admin_token), admin_token.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


def current() -> Session | None:
    """The request's valid session cookie, or None (missing, forged, expired, or stale)."""
    admin_token = _admin_token()
    raw = request.cookies.get(COOKIE)
    if not admin_token or not raw or len(raw) > MAX_COOKIE_CHARS:
        return None
    try:
        data = _serializer(admin_token).loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("c"), str):
        return None
    sid = data.get("s") if isinstance(data.get("s"), str) else ""
    signed_in = data.get("in") == 1 and hmac.compare_digest(
        str(data.get("fp", "")), _fingerprint(admin_token)
    )
    if signed_in:
        # A copy of a cookie that signed out is signed out too, whichever worker is asked.
        signed_in = not REVOKED.is_revoked(proxy_state().activity.board, sid)
    return Session(csrf=data["c"], signed_in=signed_in, sid=sid)


def signed_in() -> bool:
    session = current()
    return session is not None and session.signed_in


def fresh(signed_in: bool = False) -> Session:
    """A new session (new CSRF token): made on sign-in and sign-out, so none is ever reused."""
    return Session(
        csrf=secrets.token_urlsafe(32), signed_in=signed_in, sid=secrets.token_urlsafe(24)
    )


def revoke(session: Session) -> None:
    """Sign a session out for good: its cookie, and every copy of it, on every worker."""
    REVOKED.revoke(proxy_state().activity.board, session.sid, SESSION_SECONDS)


def store(response: Response, session: Session, path: str) -> Response:
    """Set the session cookie on a response."""
    admin_token = _admin_token() or ""
    data = {"c": session.csrf, "in": 1 if session.signed_in else 0, "s": session.sid}
    if session.signed_in:
        data["fp"] = _fingerprint(admin_token)
    response.set_cookie(
        COOKIE,
        _serializer(admin_token).dumps(data),
        max_age=SESSION_SECONDS,
        path=path,
        secure=request.is_secure,
        httponly=True,
        samesite="Strict",
    )
    return response


def csrf_ok(session: Session | None, presented: str | None) -> bool:
    """Whether a form's CSRF token is the one its cookie holds (compared in constant time)."""
    if session is None or not presented or len(presented) > 256:
        return False
    return hmac.compare_digest(session.csrf.encode(), presented.encode("utf-8", "replace"))


# -- wrong tokens --------------------------------------------------------------------------------


def _limiter() -> FixedWindowRateLimiter:
    # In the rate-limit storage, so that with Redis every worker and host counts together.
    return FixedWindowRateLimiter(proxy_state().quotas.storage)


def _address() -> str:
    return request.remote_addr or "unknown"


def blocked_for(scope: str = SIGN_IN_SCOPE) -> float | None:
    """Seconds until this address may try again, if it has used up its wrong tokens (of the
    admin token, or of the secret `scope` names)."""
    limiter = _limiter()
    try:
        if limiter.test(SIGN_IN_LIMIT, scope, _address()):
            return None
        stats = limiter.get_window_stats(SIGN_IN_LIMIT, scope, _address())
    except StorageError:
        logger.warning("sign-in limit not checked: the rate-limit storage failed")
        return None
    return max(1.0, stats.reset_time - time.time())


def count_wrong_token(scope: str = SIGN_IN_SCOPE) -> None:
    try:
        _limiter().hit(SIGN_IN_LIMIT, scope, _address())
    except StorageError:
        logger.warning("wrong sign-in not counted: the rate-limit storage failed")
