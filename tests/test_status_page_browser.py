"""The status page in headless Chromium against a real gunicorn, echo models and a stub upstream.

Skipped only where Debian's chromium and chromium-driver are missing (`.ci/run` installs them).
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from tests.browser import chromium, missing, other_hosts, requested_urls
from tests.conftest import TOKEN, openai_model
from tests.servers import ProxyServer, wait_until
from tests.stub_upstream import Reply, StubUpstream, chat_completion

pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))

ADMIN = "admin-token-for-the-browser"
HEALTHY = Reply(body=chat_completion())
FAILING = Reply(status=500, body={"error": {"message": "the stub upstream is down"}})
SECTIONS = ("deployments", "tokens", "costs", "errors")


def proxy_config(upstream: StubUpstream, admin: bool = True) -> dict:
    return {
        "auth": {
            "tokens": [
                {"name": "team-a", "token": TOKEN, "requests_per_minute": 100, "budget_per_day": 5},
                {"name": "team-b", "token": "sk-team-b-token", "tokens_per_day": 50000},
            ],
            **({"admin_token": ADMIN} if admin else {}),
        },
        "models": [
            {"name": "echo", "provider": "echo", "model_size": "SMALL"},
            {"name": "echo-large", "provider": "echo", "model_size": "BIG"},
            openai_model(upstream, name="flaky", input_cost_per_mtok=1.0),
        ],
        "retry": {"max_retries": 0},
        "routing": {"cooldown_seconds": 120},
    }


def start_proxy(tmp_path_factory, upstream: StubUpstream, **kwargs) -> ProxyServer:
    import yaml

    path = tmp_path_factory.mktemp("proxy") / "config.yaml"
    path.write_text(yaml.safe_dump(proxy_config(upstream, kwargs.pop("admin", True))))
    return ProxyServer(path, **kwargs).start()


@pytest.fixture(scope="module")
def upstream():
    stub = StubUpstream()
    yield stub
    stub.close()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, upstream):
    server = start_proxy(tmp_path_factory, upstream)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chromium_once():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium_once):
    """One browser for the module (starting one takes a while), with no cookie from before."""
    chromium_once.delete_all_cookies()
    requested_urls(chromium_once)  # the network log so far is another test's
    return chromium_once


def chat(proxy: ProxyServer, model: str) -> int:
    # A connection of its own each time: with several workers, any of them may take it.
    response = requests.post(
        proxy.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hello there"}]},
        headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"},
        timeout=10,
    )
    return response.status_code


def sign_in(driver, proxy: ProxyServer, token: str = ADMIN) -> None:
    from selenium.webdriver.common.by import By

    driver.get(proxy.url + "/admin")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "sign-in").click()


def row_text(driver, key: str) -> str:
    from selenium.webdriver.common.by import By

    for row in driver.find_elements(By.CSS_SELECTOR, "#deployments tr[data-key]"):
        if row.get_attribute("data-key") == key:
            return row.text
    return ""


def text_of(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return found[0].text if found else ""


def test_sign_in_watch_a_deployment_cool_down_and_sign_out(proxy, upstream, browser):
    upstream.default = HEALTHY
    assert chat(proxy, "echo") == 200
    sign_in(browser, proxy)
    assert wait_until(lambda: text_of(browser, "deployments"), timeout=20)
    page = browser.page_source
    for name in ("echo#0", "echo-large#1", "flaky#2", "team-a", "team-b"):
        assert name in page
    assert "healthy" in row_text(browser, "flaky#2")
    cookie = browser.get_cookie("ai_proxy_admin")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is False and cookie["path"] == "/admin"
    assert ADMIN not in browser.current_url and ADMIN not in cookie["value"]

    browser.execute_script("window.stillTheSamePage = true;")
    upstream.default = FAILING
    assert chat(proxy, "flaky") == 502
    # The page's script notices within a few seconds; the page is never reloaded.
    assert wait_until(lambda: "cooling down" in row_text(browser, "flaky#2"), timeout=30)
    assert "until" in row_text(browser, "flaky#2")
    assert browser.execute_script("return window.stillTheSamePage;") is True
    assert wait_until(lambda: "500" in text_of(browser, "errors"), timeout=20)
    assert text_of(browser, "live") == "live"
    assert "upstream answered 500" in text_of(browser, "errors")

    assert other_hosts(requested_urls(browser), proxy.url) == []
    errors = [
        entry["message"]
        for entry in browser.get_log("browser")
        if entry["level"] == "SEVERE" and "favicon" not in entry["message"]
    ]
    assert errors == []  # no CSP violation, no script error

    from selenium.webdriver.common.by import By

    browser.find_element(By.ID, "sign-out").click()
    assert wait_until(lambda: browser.find_elements(By.ID, "token"), timeout=20)
    browser.refresh()
    assert browser.find_elements(By.ID, "token") and not text_of(browser, "deployments")


def test_with_scripts_off_the_page_shows_the_state(proxy, upstream):
    upstream.default = FAILING
    chat(proxy, "flaky")  # 502, or 503 if it is still cooling down from another test
    driver = chromium(scripts=False)
    try:
        sign_in(driver, proxy)
        assert wait_until(lambda: text_of(driver, "deployments"), timeout=20)
        assert "cooling down" in row_text(driver, "flaky#2")
        assert "healthy" in row_text(driver, "echo#0")
        from selenium.webdriver.common.by import By

        assert not driver.find_element(By.ID, "live").is_displayed()
        assert other_hosts(requested_urls(driver), proxy.url) == []
    finally:
        driver.quit()


def test_secure_cookie_behind_a_tls_proxy(proxy):
    """gunicorn trusts X-Forwarded-Proto from loopback (forwarded_allow_ips): HTTPS, so Secure."""
    for forwarded, secure in (("https", True), (None, False)):
        headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
        form = requests.get(proxy.url + "/admin", headers=headers, timeout=5)
        cookie = form.headers["Set-Cookie"]
        assert ("Secure" in cookie) is secure
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_client_tokens_refused_and_wrong_tokens_limited(proxy, browser):
    """After the other tests on `proxy`: it spends this address's wrong tokens for the minute."""
    server = proxy
    sign_in(browser, server, TOKEN)
    assert "client token cannot sign in" in wait_until(lambda: text_of(browser, "message"))
    guesser = requests.Session()
    form = guesser.get(server.url + "/admin", timeout=5)
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    for _ in range(6):
        answer = guesser.post(
            server.url + "/admin/sign-in",
            data={"token": "a-wrong-guess", "csrf": csrf},
            headers={"Connection": "close"},
            timeout=5,
        )
        if answer.status_code != 401:
            break
    assert answer.status_code == 429 and int(answer.headers["Retry-After"]) >= 1
    sign_in(browser, server)  # the right token, from the same address
    message = wait_until(lambda: text_of(browser, "message"))
    assert "Too many wrong tokens" in message and "try again in" in message
    assert not text_of(browser, "deployments")


def test_no_admin_token_no_page(tmp_path_factory, upstream):
    server = start_proxy(tmp_path_factory, upstream, admin=False)
    try:
        for path in ("/admin", "/admin/assets/status.js", "/admin/assets/status.css"):
            response = requests.get(server.url + path, timeout=5)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert requests.post(server.url + "/admin/sign-in", timeout=5).status_code == 404
    finally:
        server.stop()


def sections(html: str) -> dict[str, str]:
    found = {}
    for name in SECTIONS:
        match = re.search(rf'<table id="{name}">.*?</table>', html, re.S)
        found[name] = match.group(0) if match else ""
    return found


def test_two_workers_agree(tmp_path_factory, browser):
    stub = StubUpstream()
    server = start_proxy(tmp_path_factory, stub, workers=2)
    try:
        # Token windows are sliding-window counters: what the last minute used fades as this one
        # goes on, so the page would change between reloads. All of it happens within a minute.
        left = 60 - time.time() % 60
        if left < 25:
            time.sleep(left + 0.5)
        for _ in range(12):
            assert chat(server, "echo") == 200
        for _ in range(3):
            assert chat(server, "echo-large") == 200
        stub.default = FAILING
        assert chat(server, "flaky") == 502
        admin = {"Authorization": f"Bearer {ADMIN}", "Connection": "close"}

        def settled() -> bool:
            # Every worker has published: five answers in a row show all of the traffic.
            for _ in range(5):
                report = requests.get(server.url + "/admin/status", headers=admin, timeout=5).json()
                by_key = {d["key"]: d for d in report["deployments"]}
                if (
                    by_key["echo#0"]["activity"]["requests_recent"] != 12
                    or by_key["echo-large#1"]["activity"]["requests_recent"] != 3
                    or by_key["flaky#2"]["state"] != "cooling_down"
                ):
                    return False
            return True

        assert wait_until(settled, timeout=30, interval=0.2)
        sign_in(browser, server)
        assert wait_until(lambda: text_of(browser, "deployments"), timeout=20)

        def ten_reloads_agree() -> bool:
            seen = []
            for _ in range(10):
                browser.get(server.url + "/admin")
                seen.append({name: text_of(browser, name) for name in SECTIONS})
            differing.append([n for n in SECTIONS if any(v[n] != seen[0][n] for v in seen)])
            return not differing[-1]

        # The page is a clock too (a minute's bar moves into the sparkline, a cooldown's time
        # left shrinks): a round of ten that straddles such a moment may differ, two may not.
        differing: list[list[str]] = []
        assert ten_reloads_agree() or ten_reloads_agree(), differing
        assert "cooling down" in row_text(browser, "flaky#2")
        # Over fresh connections too (any worker may answer each).
        cookie = {"ai_proxy_admin": browser.get_cookie("ai_proxy_admin")["value"]}

        def ten_fetches_agree() -> list[dict]:
            pages = [
                sections(
                    requests.get(
                        server.url + "/admin", cookies=cookie, headers={"Connection": "close"}
                    ).text
                )
                for _ in range(10)
            ]
            differing.append([n for n in pages[0] if any(p[n] != pages[0][n] for p in pages)])
            return pages if not differing[-1] else []

        # The same clock as above: of two rounds, one agrees.
        pages = ten_fetches_agree() or ten_fetches_agree()
        assert pages, differing
        assert ">12<" in pages[0]["deployments"]

    finally:
        server.stop()
        stub.close()
