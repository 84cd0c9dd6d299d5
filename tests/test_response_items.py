"""GET /v1/responses/<id>/input_items: a stored response's input items in OpenAI's list shape,
paged with `after`/`limit`/`order`, only to the token that made it; through real gunicorn with
the openai SDK for passed-through and translated deployments."""

from __future__ import annotations

import openai
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from app import create_app
from app.response_items import Order, Page, list_page
from tests.conftest import LOOPBACK, TOKEN
from tests.servers import ProxyServer
from tests.stub_upstream import StubUpstream
from tests.wire_stubs import every_format, models

OTHER = "sk-other-team-token"
TOKENS = [{"name": "team", "token": TOKEN}, {"name": "other", "token": OTHER}]
CALL = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
INPUT = [
    {"role": "user", "content": "first"},
    {"type": "message", "role": "assistant", "content": "an answer"},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "second"}]},
    CALL,
    {"type": "function_call_output", "call_id": "c1", "output": "42"},
]


@pytest.fixture(scope="module")
def app():
    return create_app(
        {
            "env": {},
            "config_path": None,
            "default_model": None,
            "auth": {"tokens": TOKENS},
            "models": [{"name": "echo", "provider": "echo"}],
        }
    )


def client_for(app, token: str = TOKEN):
    client = app.test_client()
    client.environ_base.update({"HTTP_AUTHORIZATION": f"Bearer {token}", **LOOPBACK})
    return client


@pytest.fixture(scope="module")
def stored(app) -> str:
    response = client_for(app).post("/v1/responses", json={"model": "echo", "input": INPUT})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["id"]


def items_of(app, response_id: str, query: str = "", token: str = TOKEN):
    return client_for(app, token).get(f"/v1/responses/{response_id}/input_items{query}")


def test_the_default_page_is_newest_first(app, stored):
    page = items_of(app, stored).get_json()
    assert page["object"] == "list" and page["has_more"] is False
    data = page["data"]
    assert [item["type"] for item in data] == [
        "function_call_output",
        "function_call",
        "message",
        "message",
        "message",
    ]
    assert data[-1]["content"] == [{"type": "input_text", "text": "first"}]
    assert data[-2]["content"][0]["type"] == "output_text"
    assert page["first_id"] == data[0]["id"] and page["last_id"] == data[-1]["id"]
    assert len({item["id"] for item in data}) == len(data)
    # Ids are the stored response's: the same on every read.
    assert items_of(app, stored).get_json() == page


def test_pages_follow_the_cursor(app, stored):
    first = items_of(app, stored, "?order=asc&limit=2").get_json()
    assert [i["type"] for i in first["data"]] == ["message", "message"] and first["has_more"]
    second = items_of(app, stored, f"?order=asc&limit=2&after={first['last_id']}").get_json()
    third = items_of(app, stored, f"?order=asc&limit=2&after={second['last_id']}").get_json()
    assert [i["type"] for i in second["data"]] == ["message", "function_call"]
    assert [i["type"] for i in third["data"]] == ["function_call_output"]
    assert second["has_more"] and not third["has_more"]


def test_another_token_gets_a_404(app, stored):
    response = items_of(app, stored, token=OTHER)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
    assert items_of(app, "resp_unknown").status_code == 404


@pytest.mark.parametrize(
    "query,param",
    [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=-1", "limit"),
        ("?limit=abc", "limit"),
        ("?limit=2.5", "limit"),
        ("?limit=", "limit"),
        ("?limit=%D9%A3", "limit"),  # an Arabic-Indic digit: isdigit() but not a number here
        ("?order=up", "order"),
        ("?order=", "order"),
        ("?after=", "after"),
        ("?after=" + "x" * 300, "after"),
        ("?after=item_unknown", "after"),
        ("?include[]=bogus", "include"),
        ("?include=bogus", "include"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_field(app, stored, query, param):
    response = items_of(app, stored, query)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_known_includes_are_accepted(app, stored):
    query = "?include[]=message.input_image.image_url&include[]=reasoning.encrypted_content"
    assert items_of(app, stored, query).status_code == 200


ITEM = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text()}),
    st.fixed_dictionaries(
        {"type": st.just("message"), "role": st.just("user"), "id": st.sampled_from(["a", "b"])}
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(ITEM, max_size=12),
    limit=st.integers(1, 5),
    order=st.sampled_from(list(Order)),
)
def test_paging_visits_every_item_once_in_order(items, limit, order):
    """Any stored input, any page size: following `after` lists every item once, in order,
    with ids unique even where the client sent the same id twice."""
    seen: list[dict] = []
    after = None
    while True:
        page = list_page("resp_x", items, Page(limit, order, after))
        seen.extend(page["data"])
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert len(seen) == len(items)
    assert len({item["id"] for item in seen}) == len(items)
    expected = items if order is Order.ASC else items[::-1]
    assert [item.get("role") for item in seen] == [item.get("role") for item in expected]


# --- through gunicorn, with the openai SDK -----------------------------------------------


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    upstream = StubUpstream()
    upstream.handler = every_format
    path = tmp_path_factory.mktemp("input-items") / "config.yaml"
    config = {
        "auth": {"tokens": TOKENS},
        "models": models(upstream.url),
        "retry": {"max_retries": 0},
        "routing": {"cooldown_seconds": 0},
    }
    path.write_text(yaml.safe_dump(config))
    server = ProxyServer(path).start()
    yield server
    server.stop()
    upstream.close()


def sdk(proxy, token: str = TOKEN) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=token, max_retries=0)


@pytest.mark.parametrize("model", ["native", "chat-only"])
def test_the_sdk_lists_input_items(proxy, model):
    client = sdk(proxy)
    first = client.responses.create(model=model, input="one")
    second = client.responses.create(
        model=model,
        previous_response_id=first.id,
        input=[
            {"role": "user", "content": "two"},
            {"role": "user", "content": [{"type": "input_text", "text": "three"}]},
        ],
    )
    page = client.responses.input_items.list(second.id, limit=1, order="asc")
    assert page.has_more and len(page.data) == 1
    items = list(page)  # the SDK follows `after` to the end
    texts = [
        part.text
        for item in items
        if item.type == "message"
        for part in item.content
        if part.type in ("input_text", "output_text")
    ]
    # The whole conversation the answer came from: the first turn, its answer, the new input.
    assert texts[0] == "one" and texts[-2:] == ["two", "three"] and len(texts) == 4
    newest = client.responses.input_items.list(second.id, include=["message.input_image.image_url"])
    assert [item.id for item in newest.data] == [item.id for item in reversed(items)]
    with pytest.raises(openai.NotFoundError):
        sdk(proxy, OTHER).responses.input_items.list(second.id)
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.input_items.list(second.id, limit=500)
    assert refused.value.body["param"] == "limit"
