"""An upstream's Retry-After keeps a deployment out for at most an hour, whatever it says: not a
number of seconds (`inf`, `nan`, `1e400`) or a date out of range is no wait at all, and nothing an
upstream sends reaches the status page or /admin/status as a time it cannot show."""

from __future__ import annotations

import json
import math
import time

import pytest

from app.activity import read_snapshot
from app.statuspage.render import clock
from app.upstream import MAX_UPSTREAM_WAIT_SECONDS, parse_retry_after, upstream_wait
from tests.conftest import TOKEN, openai_model
from tests.stub_upstream import Reply, chat_completion
from tests.test_status_page import ADMIN

HOUR = MAX_UPSTREAM_WAIT_SECONDS


@pytest.mark.parametrize(
    "header, expected",
    [
        ("5", 5.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("3600", HOUR),
        ("99999999", HOUR),
        ("1e300", HOUR),
        ("inf", None),
        ("Infinity", None),
        ("-inf", None),
        ("nan", None),
        ("NaN", None),
        ("1e400", None),
        ("-1e400", None),
        ("soon", None),
        ("", None),
        ("   ", None),
        ("9" * 80, None),
        ("Fri, 31 Dec 99999 23:59:59 GMT", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
    ],
)
def test_retry_after_values(header, expected):
    assert parse_retry_after(header) == expected


def test_a_date_within_the_hour_is_its_distance():
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    assert 115 <= parse_retry_after(when) <= 120
    far = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30 * 86400))
    assert parse_retry_after(far) == HOUR


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, None])
def test_a_cooldown_ignores_waits_that_are_not_numbers(value):
    assert upstream_wait(value) is None


def wild_config(upstream, **routing) -> dict:
    model = openai_model(upstream, name="wild/*")
    model.pop("model")
    return {
        "auth": {"tokens": [{"name": "t", "token": TOKEN}], "admin_token": ADMIN},
        "models": [model],
        "retry": {"max_retries": 0},
        "routing": {"failure_threshold": 3, **routing},
    }


def ask(client, model: str):
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


def strictly_parsed(text: str):
    """JSON as strict parsers (browsers, Node) read it: `Infinity` and `NaN` are errors."""

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("header", ["inf", "1e400", "nan", "Fri, 31 Dec 99999 23:59:59 GMT"])
def test_an_unreadable_retry_after_does_not_switch_a_wildcard_deployment_off(
    make_app, upstream, header
):
    client = make_app(wild_config(upstream)).test_client()
    upstream.queue(Reply(status=429, body={}, headers={"Retry-After": header}))
    assert ask(client, "wild/limited").status_code in (429, 502, 503)
    # Below the failure threshold and with no usable wait: no cooldown, the next one is served.
    upstream.queue(Reply(body=chat_completion()))
    assert ask(client, "wild/other").status_code == 200
    status = client.get("/admin/status", headers={"Authorization": f"Bearer {ADMIN}"})
    (deployment,) = strictly_parsed(status.get_data(as_text=True))["deployments"]
    assert deployment["state"] != "cooling_down"


def test_a_retry_after_of_years_cools_down_for_an_hour_at_most(make_app, upstream):
    client = make_app(wild_config(upstream)).test_client()
    upstream.queue(Reply(status=429, body={}, headers={"Retry-After": "99999999"}))
    ask(client, "wild/limited")
    refused = ask(client, "wild/other")
    assert refused.status_code == 503
    assert refused.json["error"]["type"]
    assert 1 <= int(refused.headers["Retry-After"]) <= HOUR
    admin = {"Authorization": f"Bearer {ADMIN}"}
    status = strictly_parsed(client.get("/admin/status", headers=admin).get_data(as_text=True))
    (deployment,) = status["deployments"]
    assert deployment["state"] == "cooling_down"
    assert deployment["cooling_down_for_seconds"] <= HOUR
    page = client.get("/admin", headers=admin)
    assert page.status_code == 200
    assert "cooling down" in page.get_data(as_text=True)


@pytest.mark.parametrize("until", ["Infinity", "NaN", "-Infinity"])
def test_a_snapshot_with_numbers_no_clock_shows_is_not_read(until):
    """Another worker's (or another version's) snapshot on the shared board."""
    good = {
        "worker": "w1",
        "time": time.time(),
        "live": {"breakers": {"gpt#0": [time.time() + 60, 3]}},
    }
    assert read_snapshot(json.dumps(good).encode()) is not None
    bad = json.dumps(good).replace(str(good["live"]["breakers"]["gpt#0"][0]), until)
    assert read_snapshot(bad.encode()) is None
    huge = json.dumps(good).replace('"gpt#0": [', '"gpt#0": [1e300, 1e400], "x": [')
    assert read_snapshot(huge.encode()) is None


@pytest.mark.parametrize("epoch", [1e300, -1e300, 1e20])
def test_the_page_clock_shows_nothing_for_a_time_out_of_range(epoch):
    assert clock(epoch) == ""
    assert clock(0.0) == "00:00:00 UTC"


@pytest.mark.parametrize("stored", [b"inf", b"nan", b"-inf"])
def test_a_redis_breaker_time_that_is_not_a_number_is_no_cooldown(redis_server, stored):
    """Written by another version or by hand: the deployment is served (fail open)."""
    import redis

    from app.cooldown import RedisBreakers

    client = redis.Redis.from_url(redis_server.url)
    breakers = RedisBreakers(client)
    opened, failures = RedisBreakers.state_keys("gpt#0")
    client.set(opened, stored)
    client.set(failures, 3)
    (state,) = breakers.states(["gpt#0"])
    assert state.open_until is None and state.failures == 3
    client.set(opened, str(time.time() + 60))
    (state,) = breakers.states(["gpt#0"])
    assert state.open_until is not None
