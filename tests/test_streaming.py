"""Streams: relayed chunk by chunk, usage handling, in-band errors, the SSE parser."""

from __future__ import annotations

import json

import pytest

from app.streaming import iter_sse
from tests.conftest import TOKEN, openai_model
from tests.servers import wait_until
from tests.stub_upstream import Reply, chat_chunks, chat_completion

CHAT = {"model": "gpt", "stream": True, "messages": [{"role": "user", "content": "hello"}]}


def events(response) -> list[str]:
    text = response.get_data(as_text=True)
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.strip().split("\n\n")]


@pytest.fixture
def client(make_app, upstream):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [
                openai_model(upstream, name="gpt", priority=1),
                openai_model(upstream, name="gpt", priority=2, model="backup"),
                {"name": "echo", "provider": "echo"},
            ],
            "retry": {"max_retries": 0},
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


def test_stream_is_relayed_and_usage_asked_upstream(client, upstream):
    upstream.queue(Reply(events=chat_chunks(["one", "two", "three"])))
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    data = events(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "one two three"
    # The client did not ask for usage: the usage-only chunk is dropped.
    assert all(c["choices"] and "usage" not in c for c in chunks)
    sent = upstream.requests[0].json()
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_include_usage_gives_the_usage_chunk(client, upstream):
    upstream.queue(Reply(events=chat_chunks(["a", "b"])))
    body = {**CHAT, "stream_options": {"include_usage": True}}
    chunks = [json.loads(d) for d in events(client.post("/v1/chat/completions", json=body))[:-1]]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_echo_streams_word_by_word_with_usage(client):
    body = {
        **CHAT,
        "model": "echo",
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "the quick brown fox"}],
    }
    chunks = [json.loads(d) for d in events(client.post("/v1/chat/completions", json=body))[:-1]]
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert contents == ["", "the", " quick", " brown", " fox", None]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


def test_failure_before_the_first_byte_falls_back(client, upstream):
    upstream.queue(
        Reply(status=503, body={"error": "busy"}), Reply(events=chat_chunks(["from", "backup"]))
    )
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.headers["x-ai-proxy-attempts"] == "2"
    assert "from" in response.get_data(as_text=True)
    assert upstream.requests[1].json()["model"] == "backup"


def test_stream_cut_mid_way_ends_with_an_in_band_error(client, upstream):
    upstream.queue(Reply(events=chat_chunks(["one", "two", "three", "four"]), cut_after=3))
    data = events(client.post("/v1/chat/completions", json=CHAT))
    assert "[DONE]" not in data
    error = json.loads(data[-1])["error"]
    assert error["type"] == "upstream_error"
    assert str(upstream.port) not in data[-1]
    # Only one answer: no second deployment was spliced in after the first bytes.
    assert len(upstream.requests) == 1


def test_garbage_mid_stream_is_an_in_band_error(client, upstream):
    garbage = chat_chunks(["ok"])[:2] + ["data: {not json"]
    upstream.queue(Reply(events=garbage))
    data = events(client.post("/v1/chat/completions", json=CHAT))
    assert json.loads(data[-1])["error"]["code"] == "upstream_error"


def test_upstream_error_event_mid_stream(client, upstream):
    upstream.queue(
        Reply(events=chat_chunks(["ok"])[:2] + ['data: {"error": {"message": "overloaded"}}'])
    )
    data = events(client.post("/v1/chat/completions", json=CHAT))
    assert "overloaded" in json.loads(data[-1])["error"]["message"]


def test_unchunked_stream_with_connection_close(client, upstream):
    upstream.queue(Reply(events=chat_chunks(["no", "chunking"]), chunked=False))
    data = events(client.post("/v1/chat/completions", json=CHAT))
    assert data[-1] == "[DONE]"


def test_upstream_that_ignores_stream_still_streams(client, upstream):
    upstream.queue(Reply(body=chat_completion("whole answer")))
    body = {**CHAT, "stream_options": {"include_usage": True}}
    chunks = [json.loads(d) for d in events(client.post("/v1/chat/completions", json=body))[:-1]]
    assert chunks[0]["choices"][0]["delta"]["content"] == "whole answer"
    assert chunks[-1]["usage"]["total_tokens"] == 7


@pytest.mark.parametrize(
    "pieces",
    [
        [b"data: a\n\n", b"data: b\n\n"],
        [b"da", b"ta: a\n", b"\ndata:", b" b\n\n"],
        [b"data: a\r\n\r\n: keep-alive\r\n\r\ndata: b\r\n\r\n"],
        [b": OPENROUTER PROCESSING\n\ndata: a\n\nevent: x\ndata: b"],
    ],
)
def test_sse_parser(pieces):
    assert [e.data for e in iter_sse(pieces)] == ["a", "b"]


def test_sse_parser_keeps_event_names_and_multiline_data():
    (event,) = iter_sse([b'event: message_start\ndata: {"a":\ndata: 1}\n\n'])
    assert event.event == "message_start" and event.data == '{"a":\n1}'


def _ports(upstream) -> list[str]:
    return [r.headers["X-Client-Port"] for r in upstream.requests]


def test_a_finished_stream_gives_its_upstream_connection_back(client, upstream):
    """After [DONE] the proxy reads the chunked terminator, so the next stream reuses the
    connection instead of paying a new TCP (and TLS) handshake."""
    for words in (["one"], ["two", "three"], ["four"]):
        upstream.queue(Reply(events=chat_chunks(words)))
        assert events(client.post("/v1/chat/completions", json=CHAT))[-1] == "[DONE]"
    ports = _ports(upstream)
    assert len(ports) == 3
    assert len(set(ports)) == 1


def test_a_stream_the_client_leaves_closes_its_upstream_connection(client, upstream):
    many = [f"w{i}" for i in range(50)]
    upstream.queue(Reply(events=chat_chunks(many), delay=0.02))
    response = client.post("/v1/chat/completions", json=CHAT, buffered=False)
    first = next(iter(response.response))
    assert first.startswith(b"data: ")
    response.close()  # the client hangs up mid-stream: nothing is drained
    upstream.queue(Reply(events=chat_chunks(["next"])))
    assert events(client.post("/v1/chat/completions", json=CHAT))[-1] == "[DONE]"
    first_port, second_port = _ports(upstream)
    assert first_port != second_port


def test_an_upstream_that_does_not_end_its_body_is_not_waited_for(client, upstream):
    """[DONE], then silence longer than the drain waits: the connection is closed, not kept
    (had the drain waited for the late event and the body's end, it would have been reused)."""
    upstream.queue(Reply(events=[*chat_chunks(["x"]), "data: late"], delay=0.3))
    assert events(client.post("/v1/chat/completions", json=CHAT))[-1] == "[DONE]"
    upstream.queue(Reply(events=chat_chunks(["next"])))
    assert events(client.post("/v1/chat/completions", json=CHAT))[-1] == "[DONE]"
    assert len(set(_ports(upstream))) == 2


def test_a_body_that_ends_only_when_the_upstream_closes_is_not_drained(client, upstream):
    """Without chunking or a length the connection cannot be reused: it is closed at once,
    not read until the upstream hangs up."""
    words = chat_chunks(["x"])
    upstream.queue(Reply(events=[*words, "data: late"], delay=0.3, chunked=False))
    assert events(client.post("/v1/chat/completions", json=CHAT))[-1] == "[DONE]"
    # The stub counts an event just after writing it: wait for the last one the client got,
    # then the late one (0.3 s on) must not have been waited for.
    assert wait_until(lambda: upstream.events_sent >= len(words), 0.25)
    assert upstream.events_sent == len(words)


def test_the_drain_has_one_deadline_not_one_per_read(client, upstream):
    """An upstream trickling bytes after [DONE] (each within the per-read wait) is given up on."""
    words = chat_chunks(["x"])
    trickle = [": keep-alive"] * 20
    upstream.queue(Reply(events=[*words, *trickle], delay=0.02))
    assert events(client.post("/v1/chat/completions", json=CHAT))[-1] == "[DONE]"
    assert upstream.events_sent < len(words) + len(trickle)
    upstream.queue(Reply(events=chat_chunks(["next"])))
    assert events(client.post("/v1/chat/completions", json=CHAT))[-1] == "[DONE]"
    assert len(set(_ports(upstream))) == 2


# -- linear parsing and bounded memory (issue 12, item 7) ----------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "chunks",
    [
        [b"\n" * 4_000_000],
        [b"\r\n" * 2_000_000],
        [b": keep-alive\n" * 400_000],
        [b"data: x\n\n" * 300_000],
        # One event dripped a byte at a time, and many events split everywhere.
        [bytes([b]) for b in b"data: " + b"y" * 300_000 + b"\n\n"],
        [bytes([b]) for b in b'data: {"a": 1}\n\n' * 20_000],
    ],
    ids=["newlines", "crlf", "comments", "short events", "dripped event", "dripped events"],
)
def test_sse_parser_is_linear_in_what_it_reads(chunks):
    # A parser that copies its buffer per line or per read takes minutes on these; the test's
    # timeout is the bound, not a timed assertion.
    events = list(iter_sse(iter(chunks)))
    assert all(event.data for event in events)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: " + b"z" * (9 * 1024 * 1024)],  # one line without its end
        [b"data: zzzz\n" * (2 * 1024 * 1024)],  # many data lines and no blank line
        [b"data: " + b"z" * 4096] * 2500,  # a line that never ends, read by read
    ],
    ids=["long line", "many data lines", "unfinished line"],
)
def test_sse_event_size_is_bounded(chunks):
    from app.errors import UpstreamError

    with pytest.raises(UpstreamError, match="too large"):
        list(iter_sse(iter(chunks)))


def test_a_large_whole_answer_is_held_about_twice(client, upstream):
    import gc
    import tracemalloc

    size = 8_000_000
    upstream.default = Reply(raw=json.dumps(chat_completion("x" * size)).encode())
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        response = client.post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]},
            buffered=False,
        )
        received = sum(len(piece) for piece in response.response)
        response.close()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert received > size
    # Read into one buffer, decoded, parsed, then sent in slices: never three copies at once.
    assert peak < 2.4 * size, peak
    assert (
        json.loads(
            b"".join(
                client.post(
                    "/v1/chat/completions",
                    json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]},
                ).response
            )
        )["choices"][0]["message"]["content"]
        == "x" * size
    )
