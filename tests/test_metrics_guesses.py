"""Wrong /metrics tokens are limited per address as wrong admin tokens are: a guessing address
gets 429 JSON (whatever it sends next, so the limit is no oracle), while a scraper with the
right token is never counted, and the admin sign-in budget is not touched."""

from __future__ import annotations

import pytest
import requests
import yaml

from app import create_app
from app.statuspage.session import SIGN_IN_ATTEMPTS_PER_MINUTE
from tests.conftest import TOKEN
from tests.servers import ProxyServer

METRICS_TOKEN = "scrape-me-please"
ADMIN_TOKEN = "admin-token-for-tests"


def make_app(storage: str = "memory://"):
    return create_app(
        {
            "env": {},
            "config_path": None,
            "auth": {"tokens": [{"name": "team", "token": TOKEN}], "admin_token": ADMIN_TOKEN},
            "server": {"metrics_token": METRICS_TOKEN},
            "rate_limits": {"storage": storage},
        }
    )


def scrape(app, address: str, token: str | None):
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": address})


def guess_until_refused(app, address: str) -> None:
    for attempt in range(SIGN_IN_ATTEMPTS_PER_MINUTE):
        response = scrape(app, address, f"guess-{attempt}")
        assert response.status_code == 401, response.get_data(as_text=True)
    refused = scrape(app, address, "guess-again")
    assert refused.status_code == 429
    assert refused.mimetype == "application/json"
    assert refused.get_json()["error"]["type"] == "rate_limit_error"
    assert int(refused.headers["Retry-After"]) >= 1


def test_a_guessing_address_is_refused_and_a_scraper_is_not():
    app = make_app()
    guess_until_refused(app, "10.0.0.66")
    # The guesser learns nothing more: its right token is refused too, for now.
    assert scrape(app, "10.0.0.66", METRICS_TOKEN).status_code == 429
    # Another address with the right token is served.
    scraped = scrape(app, "10.0.0.9", METRICS_TOKEN)
    assert scraped.status_code == 200
    assert b"ai_proxy" in scraped.data


def test_right_tokens_and_missing_ones_never_count():
    app = make_app()
    for _ in range(SIGN_IN_ATTEMPTS_PER_MINUTE * 4):
        assert scrape(app, "10.0.0.9", METRICS_TOKEN).status_code == 200
        assert scrape(app, "10.0.0.9", None).status_code == 401
    assert scrape(app, "10.0.0.9", METRICS_TOKEN).status_code == 200


def test_metrics_guesses_leave_the_admin_budget_alone():
    app = make_app()
    guess_until_refused(app, "10.0.0.66")
    client = app.test_client()
    status = client.get(
        "/admin/status",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        environ_base={"REMOTE_ADDR": "10.0.0.66"},
    )
    assert status.status_code == 200


@pytest.mark.parametrize("workers", [2])
def test_two_workers_on_redis_count_together(redis_server, tmp_path, workers):
    path = tmp_path / "config.yaml"
    config = {
        "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
        "server": {"metrics_token": METRICS_TOKEN},
        "rate_limits": {"storage": redis_server.url},
        "models": [{"name": "echo", "provider": "echo"}],
    }
    path.write_text(yaml.safe_dump(config))
    server = ProxyServer(path, workers=workers).start()
    try:
        statuses = [
            requests.get(
                server.url + "/metrics",
                headers={"Authorization": f"Bearer wrong-{n}", "Connection": "close"},
                timeout=10,
            ).status_code
            for n in range(SIGN_IN_ATTEMPTS_PER_MINUTE * workers)
        ]
    finally:
        server.stop()
    # One budget across the workers: the sixth wrong token is refused whichever worker has it.
    assert statuses[:SIGN_IN_ATTEMPTS_PER_MINUTE] == [401] * SIGN_IN_ATTEMPTS_PER_MINUTE
    assert set(statuses[SIGN_IN_ATTEMPTS_PER_MINUTE:]) == {429}
