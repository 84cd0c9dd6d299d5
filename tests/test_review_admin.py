"""Adversarial tests from review: the admin token cannot be guessed without limit through any
route that checks it (the status page's Bearer path and the admin API, not only the sign-in
form)."""

from __future__ import annotations

import pytest

from tests.test_status_page import ADMIN, OTHER_ADDRESS, page_app, sign_in  # noqa: F401

GUESSES = 5  # session.SIGN_IN_ATTEMPTS_PER_MINUTE


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ROUTES = [
    ("GET", "/admin"),
    ("GET", "/admin/status"),
    ("DELETE", "/admin/cache"),
    ("POST", "/admin/sign-in"),
]


def guess(client, method: str, path: str, token: str):
    if path == "/admin/sign-in":
        return sign_in(client, token)
    return client.open(path, method=method, headers=bearer(token))


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(("then_method", "then_path"), ROUTES)
def test_wrong_admin_tokens_on_any_route_are_limited_on_every_route(
    page_app,  # noqa: F811
    method,
    path,
    then_method,
    then_path,
):
    client = page_app.test_client()
    for _ in range(GUESSES):
        assert guess(client, method, path, "guess").status_code in (200, 401)
    # The address has used up its wrong tokens: even the right one now waits, wherever it goes.
    limited = guess(client, then_method, then_path, ADMIN)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert ADMIN not in limited.get_data(as_text=True)
    # Another address is not held up.
    elsewhere = page_app.test_client()
    elsewhere.environ_base.update(OTHER_ADDRESS)
    assert guess(elsewhere, then_method, then_path, ADMIN).status_code in (200, 303, 404)


def test_the_right_admin_token_is_never_counted(page_app):  # noqa: F811
    client = page_app.test_client()
    for _ in range(GUESSES * 3):
        assert client.get("/admin/status", headers=bearer(ADMIN)).status_code == 200
        assert client.get("/admin", headers=bearer(ADMIN)).status_code == 200
