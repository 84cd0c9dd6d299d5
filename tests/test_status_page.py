"""The status page with the Flask test client: sign-in, session cookie, CSRF, limits, content."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import TOKEN, openai_model
from tests.stub_upstream import Reply

ADMIN = "admin-secret-token-for-page"
OTHER_ADDRESS = {"REMOTE_ADDR": "10.1.2.3"}
CHAT = {"model": "flaky", "messages": [{"role": "user", "content": "hello"}]}
STATIC = Path(__file__).resolve().parent.parent / "app/statuspage/static"
TEMPLATES = Path(__file__).resolve().parent.parent / "app/statuspage/templates/ai_proxy"


def page_config(upstream, **extra) -> dict:
    return {
        "auth": {
            "tokens": [
                {"name": "team-a", "token": TOKEN, "requests_per_minute": 50, "budget_per_day": 2},
                {"name": "team-b", "token": "sk-team-b-token", "tokens_per_day": 10000},
            ],
            "admin_token": ADMIN,
        },
        "models": [
            {"name": "echo", "provider": "echo", "model_size": "SMALL"},
            openai_model(upstream, name="flaky"),
        ],
        "retry": {"max_retries": 0},
        **extra,
    }


@pytest.fixture
def page_app(make_app, upstream):
    return make_app(page_config(upstream))


def csrf_of(response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', response.get_data(as_text=True)).group(1)


def cookie_header(response) -> str:
    (header,) = [v for k, v in response.headers.items() if k == "Set-Cookie"]
    return header


def sign_in(client, token: str = ADMIN, **kwargs):
    form = client.get("/admin", **kwargs)
    return client.post("/admin/sign-in", data={"token": token, "csrf": csrf_of(form)}, **kwargs)


# -- no admin token: nothing of the page exists ---------------------------------------------------


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/admin"),
        ("GET", "/admin/assets/status.js"),
        ("GET", "/admin/assets/status.css"),
        ("POST", "/admin/sign-in"),
        ("POST", "/admin/sign-out"),
    ],
)
def test_everything_is_404_without_an_admin_token(make_app, method, path):
    client = make_app(
        {"auth": {"tokens": [{"name": "t", "token": TOKEN}]}, "models": [{"name": "echo"}]}
    ).test_client()
    response = client.open(path, method=method, data={"token": "x", "csrf": "y"})
    assert response.status_code == 404
    assert response.json["error"]["code"] == "not_found"
    assert "Set-Cookie" not in response.headers


# -- signing in and out ---------------------------------------------------------------------------


def test_sign_in_and_out(page_app):
    client = page_app.test_client()
    form = client.get("/admin")
    assert form.status_code == 200 and 'method="post"' in form.get_data(as_text=True)
    assert 'name="token"' in form.get_data(as_text=True) and ADMIN not in form.get_data(
        as_text=True
    )
    signed = client.post("/admin/sign-in", data={"token": ADMIN, "csrf": csrf_of(form)})
    assert signed.status_code == 303 and signed.headers["Location"] == "/admin"
    assert ADMIN not in signed.headers["Location"] and ADMIN not in cookie_header(signed)
    page = client.get("/admin")
    text = page.get_data(as_text=True)
    assert page.status_code == 200 and 'id="deployments"' in text
    for name in ("echo", "flaky", "team-a", "team-b"):
        assert name in text
    # The session reads the JSON too (the page's script uses it); bearer access is unchanged.
    assert client.get("/admin/status").status_code == 200
    # A new CSRF token comes with the session: the sign-in form's no longer works.
    assert csrf_of(page) != csrf_of(form)
    out = client.post("/admin/sign-out", data={"csrf": csrf_of(page)})
    assert out.status_code == 303
    assert 'name="token"' in client.get("/admin").get_data(as_text=True)
    assert client.get("/admin/status").status_code == 401


def test_cookie_flags_over_http_and_https(page_app):
    plain = cookie_header(sign_in(page_app.test_client()))
    assert "HttpOnly" in plain and "SameSite=Strict" in plain and "Path=/admin" in plain
    assert "Secure" not in plain
    secure = cookie_header(sign_in(page_app.test_client(), base_url="https://proxy.example"))
    assert "Secure" in secure and "HttpOnly" in secure and "SameSite=Strict" in secure


def test_the_token_never_travels_in_a_url(page_app):
    client = page_app.test_client()
    assert client.get(f"/admin/sign-in?token={ADMIN}").status_code == 405
    assert client.get(f"/admin?token={ADMIN}").get_data(as_text=True).count('name="token"') == 1
    form = client.get("/admin").get_data(as_text=True)
    assert re.search(r'<form class="sign-in" method="post" action="/admin/sign-in">', form)


@pytest.mark.parametrize(
    "csrf",
    [None, "", "wrong", "x" * 5000, "from-another-session"],
)
def test_sign_in_without_the_form_csrf_token_is_refused(page_app, csrf):
    client = page_app.test_client()
    client.get("/admin")
    if csrf == "from-another-session":
        csrf = csrf_of(page_app.test_client().get("/admin"))
    data = {"token": ADMIN} if csrf is None else {"token": ADMIN, "csrf": csrf}
    refused = client.post("/admin/sign-in", data=data)
    assert refused.status_code == 403
    assert "expired or came from another page" in refused.get_data(as_text=True)
    assert client.get("/admin/status").status_code == 401


def test_sign_in_without_any_cookie_is_refused(page_app):
    csrf = csrf_of(page_app.test_client().get("/admin"))
    fresh = page_app.test_client()
    assert fresh.post("/admin/sign-in", data={"token": ADMIN, "csrf": csrf}).status_code == 403


def test_sign_out_wants_the_csrf_token(page_app):
    client = page_app.test_client()
    sign_in(client)
    assert client.post("/admin/sign-out").status_code == 403
    assert client.post("/admin/sign-out", data={"csrf": "guess"}).status_code == 403
    assert client.get("/admin/status").status_code == 200  # still signed in


def test_a_client_token_cannot_sign_in(page_app):
    client = page_app.test_client()
    refused = sign_in(client, TOKEN)
    assert refused.status_code == 403
    assert "client token cannot sign in" in refused.get_data(as_text=True)
    assert TOKEN not in refused.get_data(as_text=True)
    assert client.get("/admin/status").status_code == 401


@pytest.mark.parametrize(
    "token",
    ["", "wrong", ADMIN + "x", ADMIN[:-1], ADMIN.upper(), " " + ADMIN, "é" * 10, "x" * 10000],
)
def test_wrong_tokens_do_not_sign_in(page_app, token):
    client = page_app.test_client()
    refused = sign_in(client, token)
    assert refused.status_code == 401
    assert "not the admin token" in refused.get_data(as_text=True)
    assert client.get("/admin/status").status_code == 401


def test_wrong_tokens_are_rate_limited_per_address(page_app):
    client = page_app.test_client()
    for _ in range(5):
        assert sign_in(client, "guess").status_code == 401
    limited = sign_in(client, "guess")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "Too many wrong tokens" in limited.get_data(as_text=True)
    # Even the right token waits: the limit is the address's, not the guess's.
    assert sign_in(client, ADMIN).status_code == 429
    elsewhere = page_app.test_client()
    elsewhere.environ_base.update(OTHER_ADDRESS)
    assert sign_in(elsewhere, ADMIN).status_code == 303


@pytest.mark.parametrize(
    "cookie",
    ["garbage", "", "a.b.c", "x" * 3000],
)
def test_a_forged_cookie_is_not_a_session(page_app, cookie):
    client = page_app.test_client()
    client.set_cookie("ai_proxy_admin", cookie, path="/admin")
    assert client.get("/admin/status").status_code == 401
    assert 'name="token"' in client.get("/admin").get_data(as_text=True)


def test_a_session_ends_when_the_admin_token_changes(make_app, upstream, monkeypatch):
    client = make_app(page_config(upstream)).test_client()
    sign_in(client)
    cookie = client.get_cookie("ai_proxy_admin", path="/admin").value
    changed = page_config(upstream)
    changed["auth"]["admin_token"] = "another-admin-token"
    for secret in (None, "a-shared-secret-key"):
        if secret:
            monkeypatch.setenv("AI_PROXY_SECRET_KEY", secret)
        other = make_app(changed).test_client()
        other.set_cookie("ai_proxy_admin", cookie, path="/admin")
        assert other.get("/admin/status").status_code == 401


def test_sessions_are_good_on_every_worker_with_the_same_config(make_app, upstream, monkeypatch):
    monkeypatch.setenv("AI_PROXY_SECRET_KEY", "a-shared-secret-key")
    one, two = make_app(page_config(upstream)), make_app(page_config(upstream))
    client = one.test_client()
    sign_in(client)
    other = two.test_client()
    other.set_cookie("ai_proxy_admin", client.get_cookie("ai_proxy_admin", path="/admin").value)
    assert other.get("/admin/status").status_code == 200


def test_a_session_cannot_change_anything(page_app):
    """The cookie only reads: other admin methods still want the admin token itself."""
    client = page_app.test_client()
    sign_in(client)
    assert client.post("/admin/status").status_code == 405
    assert client.delete("/admin/status").status_code == 405


# -- what the page shows --------------------------------------------------------------------------


def test_page_headers_and_nothing_from_other_hosts(page_app):
    client = page_app.test_client()
    sign_in(client)
    page = client.get("/admin")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp and "http" not in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    texts = [page.get_data(as_text=True)]
    for name, kind in (("status.js", "javascript"), ("status.css", "css")):
        asset = client.get(f"/admin/assets/{name}")
        assert asset.status_code == 200 and kind in asset.content_type
        texts.append(asset.get_data(as_text=True))
    for text in texts:
        # The SVG namespace is a name, not a request.
        hosts = re.findall(r"(?:https?:)?//[\w.-]+", text.replace("http://www.w3.org/2000/svg", ""))
        assert hosts == []
        assert "style=" not in text and "<script>" not in text and "onclick" not in text


@pytest.mark.parametrize("name", ["../views.py", "status.html", "x.js", "%2e%2e"])
def test_only_the_two_assets_are_served(page_app, name):
    assert page_app.test_client().get(f"/admin/assets/{name}").status_code == 404


def test_states_in_words_and_errors_scrubbed(make_app, upstream):
    app = make_app(page_config(upstream, routing={"cooldown_seconds": 60}))
    client = app.test_client()
    secret = "sk-upstream-secret"
    upstream.queue(Reply(status=500, body={"error": {"message": f"bad key {secret} here"}}))
    client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {TOKEN}"})
    # Charged once the answer is delivered (closed).
    client.post(
        "/v1/chat/completions", json={**CHAT, "model": "echo"}, headers={"x-api-key": TOKEN}
    ).close()
    sign_in(client)
    text = client.get("/admin").get_data(as_text=True)
    row = re.search(r'<tr data-key="flaky#1".*?</tr>', text, re.S).group(0)
    assert "cooling down" in row and "until" in row and "UTC" in row
    echo = re.search(r'<tr data-key="echo#0".*?</tr>', text, re.S).group(0)
    assert "healthy" in echo
    errors = re.search(r'<table id="errors">.*?</table>', text, re.S).group(0)
    assert "flaky" in errors and "500" in errors and secret not in text
    status = client.get("/admin/status").json
    assert secret not in str(status)
    (flaky,) = [d for d in status["deployments"] if d["name"] == "flaky"]
    assert flaky["activity"]["errors_recent"] == 1 and flaky["activity"]["requests_recent"] == 1
    assert len(flaky["activity"]["requests_per_minute"]) == 60
    (cost,) = status["activity"]["costs_today"]
    assert cost["token"] == "team-a" and cost["model"] == "echo" and cost["requests"] == 1
    costs = re.search(r'<table id="costs">.*?</table>', text, re.S).group(0)
    assert "team-a" in costs and "echo" in costs
    assert "cache off" in text


def test_failing_below_the_threshold(make_app, upstream):
    client = make_app(page_config(upstream, routing={"failure_threshold": 3})).test_client()
    upstream.queue(Reply(status=503, body={}))
    client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {TOKEN}"})
    sign_in(client)
    text = client.get("/admin").get_data(as_text=True)
    row = re.search(r'<tr data-key="flaky#1".*?</tr>', text, re.S).group(0)
    assert '<span class="badge">failing</span>' in row
    assert client.get("/admin/status").json["deployments"][1]["state"] == "failing"


def test_quota_use_against_limits(page_app):
    client = page_app.test_client()
    for _ in range(3):
        client.post(
            "/v1/chat/completions",
            json={**CHAT, "model": "echo"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
    sign_in(client)
    text = client.get("/admin").get_data(as_text=True)
    row = re.search(
        r'<tr data-owner="team-a" data-limit="requests_per_minute">.*?</tr>', text, re.S
    ).group(0)
    assert "3 of 50" in row and '<meter min="0" max="50" value="3"' in row
    budget = re.search(r'data-owner="team-a" data-limit="budget_per_day">.*?</tr>', text, re.S)
    assert "$0.00 of $2.00" in budget.group(0)
    assert re.search(r'data-owner="team-b" data-limit="tokens_per_day">.*?of 10,000', text, re.S)


def test_under_a_url_prefix(make_app, upstream):
    client = make_app(page_config(upstream), url_prefix="/llm").test_client()
    assert client.get("/admin").status_code == 404
    form = client.get("/llm/admin")
    assert 'action="/llm/admin/sign-in"' in form.get_data(as_text=True)
    assert "Path=/llm/admin" in cookie_header(form)
    signed = client.post("/llm/admin/sign-in", data={"token": ADMIN, "csrf": csrf_of(form)})
    assert signed.headers["Location"] == "/llm/admin"
    text = client.get("/llm/admin").get_data(as_text=True)
    assert 'data-status-url="/llm/admin/status"' in text and "/llm/admin/assets/status.js" in text


def test_without_client_tokens_the_local_form_still_signs_in(make_app):
    app = make_app({"auth": {"admin_token": ADMIN}, "models": [{"name": "echo"}]})
    client = app.test_client()
    client.environ_base.update({"REMOTE_ADDR": "127.0.0.1"})
    assert sign_in(client).status_code == 303
    assert client.get("/admin/status").status_code == 200
    # Other form posts are still refused in local mode.
    refused = client.post("/v1/chat/completions", data={"model": "echo"})
    assert refused.status_code == 401


def test_templates_and_assets_ship_in_the_package(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=root,
        check=True,
        capture_output=True,
    )
    built = tmp_path / "ai_proxy/statuspage"
    shipped = {p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file()}
    wanted = {f"static/{p.name}" for p in STATIC.iterdir()}
    wanted |= {f"templates/ai_proxy/{p.name}" for p in TEMPLATES.iterdir()}
    assert wanted <= shipped


def test_two_hosts_sharing_redis_show_the_same_numbers(make_app, upstream, redis_server):
    """Two proxies (as two hosts would) on one Redis: the same page data from either."""
    import os

    hosts = []
    for name in ("host-a:1", "host-b:1"):
        app = make_app(page_config(upstream, rate_limits={"storage": redis_server.url}))
        activity = app.extensions["ai_proxy"].activity
        activity._worker, activity._pid = name, os.getpid()  # one process plays both hosts
        hosts.append(app)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for app, echoes in zip(hosts, (3, 2), strict=True):
        client = app.test_client()
        for _ in range(echoes):
            client.post(
                "/v1/chat/completions", json={**CHAT, "model": "echo"}, headers=auth
            ).close()
    upstream.queue(Reply(status=500, body={}))
    hosts[0].test_client().post("/v1/chat/completions", json=CHAT, headers=auth)
    for app in hosts:
        app.extensions["ai_proxy"].activity.publish()
    admin = {"Authorization": f"Bearer {ADMIN}"}
    reports = [app.test_client().get("/admin/status", headers=admin).json for app in hosts]
    for report in reports:
        report["activity"].pop("generated_at")
        for deployment in report["deployments"]:
            deployment.pop("cooling_down_for_seconds")
            deployment.pop("latency_ms")  # the answering worker's own (the shared one: activity)
            for window in deployment["quota"].values():
                window.pop("resets_in_seconds", None)
        for token in report["tokens"]:
            for window in token["quota"].values():
                window.pop("resets_in_seconds", None)
    assert reports[0]["deployments"] == reports[1]["deployments"]
    assert reports[0]["tokens"] == reports[1]["tokens"]
    assert reports[0]["activity"] == reports[1]["activity"]
    echo, flaky = reports[0]["deployments"]
    assert echo["activity"]["requests_recent"] == 5 and flaky["state"] == "cooling_down"
    assert reports[0]["activity"]["workers"] == 2
    assert reports[0]["activity"]["scope"] == "every worker of every host sharing the Redis"
    assert reports[0]["tokens"][0]["quota"]["requests_per_minute"]["remaining"] == 44


def test_the_admin_token_as_bearer_gets_the_page_without_a_session(page_app):
    client = page_app.test_client()
    page = client.get("/admin", headers={"Authorization": f"Bearer {ADMIN}"})
    text = page.get_data(as_text=True)
    assert 'id="deployments"' in text and 'id="sign-out"' not in text
    assert "Set-Cookie" not in page.headers
    for other in (TOKEN, "wrong", ADMIN + "x"):
        shown = client.get("/admin", headers={"Authorization": f"Bearer {other}"})
        assert 'name="token"' in shown.get_data(as_text=True)
