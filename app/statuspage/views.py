"""GET /admin: the status page, its sign-in and sign-out forms, and its two static files."""

from __future__ import annotations

import hmac
from pathlib import Path

from flask import Blueprint, Response, redirect, render_template, request, send_file, url_for

from ..auth import extract_token
from ..blueprints.common import proxy_state
from ..blueprints.ops import status_report
from ..errors import AuthenticationError, NotFoundError
from . import render, session

bp = Blueprint("ai_proxy_status_page", __name__, template_folder="templates")

STATIC = Path(__file__).parent / "static"
ASSETS = {"status.js": "text/javascript", "status.css": "text/css"}
MAX_TOKEN_CHARS = 4096
FORM_PATHS = ("/admin/sign-in", "/admin/sign-out")
REFRESH_SECONDS = 3
EXPIRED = "The form had expired or came from another page; sign in again."
# Nothing from another host, no inline script or style: the page's own files only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


@bp.before_request
def require_admin_token_configured() -> None:
    """Without an admin token the page and its files do not exist."""
    if not proxy_state().config.admin_token:
        raise NotFoundError(f"No route for {request.method} {request.path}.")


@bp.after_request
def page_headers(response: Response) -> Response:
    response.headers.update(PAGE_HEADERS)
    return response


@bp.get("/admin")
def show_status_page():
    current = session.current()
    if current is not None and current.signed_in:
        return status_page(current.csrf)
    presented = extract_token(request.headers)
    if presented is not None:
        # A script or curl with the admin token as Bearer gets the page without a session;
        # wrong ones count against the sign-in limit, or this would be an unlimited oracle.
        wait = session.blocked_for()
        if wait is not None:
            return too_many(current, wait)
        if _is_admin_token(presented):
            return status_page(None)
        session.count_wrong_token()
    return sign_in_form(current)


def too_many(current: session.Session | None, wait: float) -> Response:
    """The sign-in form with a 429, for an address that has used up its wrong tokens."""
    message = f"Too many wrong tokens from your address; try again in {int(wait) + 1} s."
    response = sign_in_form(current, message, status=429)
    response.headers["Retry-After"] = str(int(wait) + 1)
    return response


def status_page(csrf: str | None) -> Response:
    """The page itself; `csrf` is the session's (None: no session, so no sign-out form)."""
    body = render_template(
        "ai_proxy/status.html",
        page=render.page(status_report()),
        csrf=csrf,
        refresh_seconds=REFRESH_SECONDS,
        status_url=url_for("ai_proxy_ops.get_status"),
    )
    return Response(body, content_type="text/html; charset=utf-8")


@bp.post("/admin/sign-in")
def sign_in():
    current = session.current()
    wait = session.blocked_for()
    if wait is not None:
        return too_many(current, wait)
    if not session.csrf_ok(current, request.form.get("csrf")):
        return sign_in_form(current, EXPIRED, 403)
    presented = request.form.get("token", "")
    if _is_admin_token(presented):
        response = redirect(url_for(".show_status_page"), code=303)
        return session.store(response, session.fresh(signed_in=True), _cookie_path())
    session.count_wrong_token()
    if _is_client_token(presented):
        return sign_in_form(current, "A client token cannot sign in; use the admin token.", 403)
    return sign_in_form(current, "That is not the admin token.", 401)


@bp.post("/admin/sign-out")
def sign_out():
    current = session.current()
    if not session.csrf_ok(current, request.form.get("csrf")):
        return sign_in_form(current, EXPIRED, 403)
    if current.signed_in:
        session.revoke(current)
    response = redirect(url_for(".show_status_page"), code=303)
    return session.store(response, session.fresh(), _cookie_path())


@bp.get("/admin/assets/<name>")
def get_asset(name: str):
    if name not in ASSETS:
        raise NotFoundError(f"No route for {request.method} {request.path}.")
    response = send_file(STATIC / name, mimetype=ASSETS[name], max_age=0)
    response.headers["Cache-Control"] = "no-cache"
    return response


def _is_admin_token(presented: str | None) -> bool:
    """Compared in constant time; never true without an admin token configured."""
    wanted = (proxy_state().config.admin_token or "").encode("utf-8")
    if not presented or not wanted or len(presented) > MAX_TOKEN_CHARS:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), wanted)


def _is_client_token(presented: str) -> bool:
    if not presented or len(presented) > MAX_TOKEN_CHARS:
        return False
    try:
        proxy_state().authenticator.authenticate({"x-api-key": presented}, None)
    except AuthenticationError:
        return False
    return True


def takes_form(path: str) -> bool:
    """Whether a path (below the proxy's prefix) is one of the page's CSRF-protected forms."""
    return path in FORM_PATHS


def sign_in_form(current: session.Session | None, message: str = "", status: int = 200) -> Response:
    """The sign-in page, whose form carries the CSRF token of the session cookie (a new one if
    there is none; an existing session, signed in or not, is left as it is)."""
    cookie = current is None
    if current is None:
        current = session.fresh()
    body = render_template("ai_proxy/sign_in.html", csrf=current.csrf, message=message)
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    return session.store(response, current, _cookie_path()) if cookie else response


def _cookie_path() -> str:
    return url_for(".show_status_page")
