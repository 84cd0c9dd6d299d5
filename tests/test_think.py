"""strip_think: reasoning removed from whole answers and from streams split anywhere."""

from __future__ import annotations

import json

import pytest

from app.think import ThinkFilter, strip_think
from tests.conftest import TOKEN, openai_model
from tests.stub_upstream import Reply, chat_chunks, chat_completion

TEXT = "<think>the user wants a greeting\nso greet</think>\n\nHello <b>there</b>, friend."
VISIBLE = "Hello <b>there</b>, friend."


@pytest.mark.parametrize(
    ("text", "visible"),
    [
        (TEXT, VISIBLE),
        ("no reasoning at all", "no reasoning at all"),
        ("a < b and <thin wall>", "a < b and <thin wall>"),
        ("<think>only thoughts", ""),
        ("before<think>x</think>after", "beforeafter"),
        ("<think>a</think>one<think>b</think> two", "one two"),
    ],
)
def test_whole_text(text, visible):
    assert strip_think(text) == visible


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 8, 13])
def test_any_split(size):
    think = ThinkFilter()
    pieces = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    assert "".join(think.feed(p) for p in pieces) + think.flush() == VISIBLE


@pytest.fixture
def client(make_app, upstream):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [
                openai_model(upstream, name="r1", strip_think=True),
                openai_model(upstream, name="raw"),
            ],
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


def test_through_the_proxy_whole_and_streamed(client, upstream):
    body = {"model": "r1", "messages": [{"role": "user", "content": "hi"}]}
    upstream.queue(Reply(body=chat_completion(TEXT)))
    answer = client.post("/v1/chat/completions", json=body).json
    assert answer["choices"][0]["message"]["content"] == VISIBLE

    pieces = [TEXT[i : i + 4] for i in range(0, len(TEXT), 4)]
    events = chat_chunks(["x"])
    template = json.loads(events[1][6:])
    chunks = []
    for piece in pieces:
        template["choices"][0]["delta"] = {"content": piece}
        chunks.append("data: " + json.dumps(template))
    upstream.queue(Reply(events=[events[0], *chunks, *events[2:]]))
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True})
    data = [b[6:] for b in streamed.get_data(as_text=True).strip().split("\n\n")]
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, data[:-1])
        if c["choices"]
    )
    assert text == VISIBLE

    upstream.queue(Reply(body=chat_completion(TEXT)))
    raw = client.post("/v1/chat/completions", json={**body, "model": "raw"}).json
    assert raw["choices"][0]["message"]["content"] == TEXT
