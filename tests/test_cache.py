"""The response cache in the app: hits, misses and bypasses, what is stored and what is not,
headers, quotas, Cache-Control, scopes, corrupt or unreachable storage, and the admin delete."""

from __future__ import annotations

import json
import logging

import pytest
from prometheus_client import REGISTRY

from app.blueprints.common import MAX_DEPTH, proxy_state
from app.cache import decode, encode
from tests.conftest import LOOPBACK, TOKEN, openai_model
from tests.servers import free_port, wait_until
from tests.stub_upstream import Reply, chat_chunks, chat_completion, text_completion

OTHER = "sk-other-client-token"
ADMIN = "admin-secret-token"
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hello"}]}
MESSAGE = {"model": "gpt-test", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}


def metric(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def cached(make_app, upstream):
    """A factory of test clients for an app with the cache on (`cache` and `extra` add)."""

    def make(cache: dict | None = None, models: list | None = None, token: str = TOKEN, **extra):
        config = {
            "auth": {
                "tokens": [
                    {"name": "team-a", "token": TOKEN, **extra.pop("limits", {})},
                    {"name": "team-b", "token": OTHER},
                ],
                "admin_token": ADMIN,
            },
            "models": models or [openai_model(upstream)],
            "retry": {"max_retries": 0},
            "cache": {"enabled": True, **(cache or {})},
            **extra,
        }
        app = make_app(config)
        client = app.test_client()
        client.environ_base.update({"HTTP_AUTHORIZATION": f"Bearer {token}", **LOOPBACK})
        return client

    return make


def post(client, body=CHAT, path="/v1/chat/completions", **headers):
    return client.post(path, json=body, headers=headers)


def store_of(client):
    with client.application.app_context():
        return proxy_state().cache.store


def test_a_repeated_request_is_a_hit_with_age_and_the_producing_deployment(cached, upstream):
    client = cached()
    first = post(client)
    second = post(client)
    assert first.headers["x-ai-proxy-cache"] == "miss" and "Age" not in first.headers
    assert second.headers["x-ai-proxy-cache"] == "hit"
    assert second.headers["Age"] == "0"
    assert second.headers["x-ai-proxy-model"] == "gpt-test"
    assert second.json == first.json
    assert len(upstream.requests) == 1


def test_a_hit_names_the_deployment_that_answered_not_the_alias(cached, upstream):
    models = [
        openai_model(upstream, name="broken", base_url="http://127.0.0.1:9/v1"),
        openai_model(upstream, name="working"),
    ]
    client = cached(models=models, aliases={"fast": ["broken", "working"]})
    body = {**CHAT, "model": "fast"}
    assert post(client, body).headers["x-ai-proxy-model"] == "working"
    hit = post(client, body)
    assert hit.headers["x-ai-proxy-cache"] == "hit"
    assert hit.headers["x-ai-proxy-model"] == "working"


def test_no_header_when_the_cache_is_off(make_app, config):
    client = make_app(config).test_client()
    client.environ_base.update({"HTTP_AUTHORIZATION": f"Bearer {TOKEN}", **LOOPBACK})
    assert "x-ai-proxy-cache" not in post(client).headers


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": "gpt-test", "prompt": "Say hi"}),
        ("/v1/messages", MESSAGE),
    ],
)
def test_each_cached_surface_hits(cached, upstream, path, body):
    upstream.handler = lambda record: Reply(
        body={
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 1,
            "model": "up-model",
            "choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        if record.path.endswith("/v1/completions")
        else chat_completion()
    )
    client = cached()
    assert post(client, body, path).headers["x-ai-proxy-cache"] == "miss"
    assert post(client, body, path).headers["x-ai-proxy-cache"] == "hit"
    assert len(upstream.requests) == 1


def test_embeddings_hit(cached, upstream):
    upstream.default = Reply(
        body={
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}],
            "model": "e",
            "usage": {"prompt_tokens": 1, "total_tokens": 1},
        }
    )
    client = cached(models=[openai_model(upstream, name="emb", kind="embedding")])
    body = {"model": "emb", "input": "text"}
    assert post(client, body, "/v1/embeddings").headers["x-ai-proxy-cache"] == "miss"
    hit = post(client, body, "/v1/embeddings")
    assert hit.headers["x-ai-proxy-cache"] == "hit" and hit.json["data"][0]["embedding"] == [0.5]


def test_images_and_token_counts_bypass(cached, upstream):
    upstream.default = Reply(body={"created": 1, "data": [{"url": "https://img.test/a.png"}]})
    images = cached(models=[openai_model(upstream, name="img", kind="image")])
    for _ in range(2):
        answer = post(images, {"model": "img", "prompt": "cat"}, "/v1/images/generations")
        assert answer.headers["x-ai-proxy-cache"] == "bypass"
    counts = cached()
    for _ in range(2):
        answer = post(counts, MESSAGE, "/v1/messages/count_tokens")
        assert answer.headers["x-ai-proxy-cache"] == "bypass"
    assert len(store_of(images)) == 0 and len(store_of(counts)) == 0


def test_a_model_with_cache_false_bypasses(cached, upstream):
    client = cached(models=[openai_model(upstream, cache=False)])
    assert [post(client).headers["x-ai-proxy-cache"] for _ in range(2)] == ["bypass", "bypass"]
    assert len(upstream.requests) == 2 and len(store_of(client)) == 0


def test_an_uncacheable_deployment_answering_for_an_alias_stores_nothing(cached, upstream):
    models = [openai_model(upstream, name="private", cache=False), openai_model(upstream)]
    client = cached(models=models, aliases={"both": ["private", "gpt-test"]})
    body = {**CHAT, "model": "both"}
    assert post(client, body).headers["x-ai-proxy-cache"] == "miss"
    assert post(client, body).headers["x-ai-proxy-cache"] == "miss"
    assert len(store_of(client)) == 0


def test_no_store_neither_reads_nor_writes_and_leaves_no_trace(cached, upstream):
    client = cached()
    post(client)
    fresh = post(client, **{"Cache-Control": "no-store"})
    assert fresh.headers["x-ai-proxy-cache"] == "bypass" and len(upstream.requests) == 2
    other = {**CHAT, "messages": [{"role": "user", "content": "secret"}]}
    post(client, other, **{"Cache-Control": "max-age=0, No-Store"})
    with client.application.app_context():
        cache = proxy_state().cache
        assert len(cache.store) == 1 and not cache._flights
    assert post(client, other).headers["x-ai-proxy-cache"] == "miss"


def test_no_cache_skips_the_lookup_and_stores_the_fresh_answer(cached, upstream):
    client = cached()
    post(client)
    upstream.default = Reply(body=chat_completion("newer"))
    fresh = post(client, **{"Cache-Control": "no-cache"})
    assert fresh.headers["x-ai-proxy-cache"] == "miss"
    assert fresh.json["choices"][0]["message"]["content"] == "newer"
    hit = post(client)
    assert hit.headers["x-ai-proxy-cache"] == "hit"
    assert hit.json["choices"][0]["message"]["content"] == "newer"


def test_scope_token_keeps_tokens_apart_and_shared_does_not(cached, upstream):
    apart = cached()
    post(apart)
    other = {"HTTP_AUTHORIZATION": f"Bearer {OTHER}"}
    answer = apart.post("/v1/chat/completions", json=CHAT, environ_base={**LOOPBACK, **other})
    assert answer.headers["x-ai-proxy-cache"] == "miss"
    shared = cached({"scope": "shared"})
    post(shared)
    answer = shared.post("/v1/chat/completions", json=CHAT, environ_base={**LOOPBACK, **other})
    assert answer.headers["x-ai-proxy-cache"] == "hit"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(
            body={
                **chat_completion(),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "cut"},
                        "finish_reason": "length",
                    }
                ],
            }
        ),
        Reply(
            body={
                **chat_completion(),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ""},
                        "finish_reason": "content_filter",
                    }
                ],
            }
        ),
        Reply(status=400, body={"error": {"message": "bad", "type": "invalid_request_error"}}),
        Reply(status=500, body={"error": {"message": "down"}}),
        Reply(body={"error": {"message": "in band"}}),
    ],
    ids=["length", "content_filter", "400", "500", "in-band error"],
)
def test_incomplete_or_failed_whole_answers_are_not_stored(cached, upstream, reply):
    upstream.default = reply
    client = cached()
    post(client)
    assert post(client).headers["x-ai-proxy-cache"] == "miss"
    assert len(store_of(client)) == 0


STREAM = {**CHAT, "stream": True}


def cut_stream() -> list[str]:
    return chat_chunks(["one", "two"], usage=False)[:-2]


@pytest.mark.parametrize(
    "reply",
    [
        Reply(events=chat_chunks(["one", "two"]), cut_after=3),
        Reply(events=cut_stream()),
        Reply(events=[*chat_chunks(["one"])[:2], 'data: {"error": {"message": "overloaded"}}']),
        Reply(events=[e.replace('"stop"', '"length"') for e in chat_chunks(["one", "two"])]),
    ],
    ids=["connection cut", "no finish", "in-band error", "length"],
)
def test_cut_failed_or_truncated_streams_are_not_stored(cached, upstream, reply):
    upstream.default = reply
    client = cached()
    post(client, STREAM).get_data()
    assert len(store_of(client)) == 0
    assert post(client, STREAM).headers["x-ai-proxy-cache"] == "miss"


def test_a_stream_is_stored_before_its_last_byte_and_serves_a_whole_answer(cached, upstream):
    upstream.default = Reply(events=chat_chunks(["one", "two", "three"]))
    client = cached()
    streamed = post(client, STREAM)
    assert streamed.headers["x-ai-proxy-cache"] == "miss"
    assert streamed.get_data().endswith(b"data: [DONE]\n\n")
    whole = post(client, {**CHAT, "stream": False})
    assert whole.headers["x-ai-proxy-cache"] == "hit"
    assert whole.json["choices"][0]["message"]["content"] == "one two three"
    assert whole.json["usage"]["completion_tokens"] == 3  # kept though the client left it out
    assert len(upstream.requests) == 1


def test_a_hit_costs_no_tokens_but_counts_as_a_request(cached, upstream):
    client = cached(limits={"requests_per_minute": 3, "tokens_per_minute": 100000})
    post(client)
    with client.application.app_context():
        quotas = proxy_state().quotas
        spent = quotas.report("token:team-a")["tokens_per_minute"]["remaining"]
        assert post(client).headers["x-ai-proxy-cache"] == "hit"
        assert quotas.report("token:team-a")["tokens_per_minute"]["remaining"] == spent
    assert post(client).headers["x-ai-proxy-cache"] == "hit"
    assert post(client).status_code == 429


@pytest.mark.parametrize(
    "limits",
    [{"tokens_per_minute": 150}, {"budget_per_day": 0.0015}],
    ids=["tokens spent", "budget spent"],
)
def test_a_hit_is_served_when_the_tokens_or_budget_are_spent(cached, upstream, limits):
    """A hit costs nothing, so a spent token or budget window does not refuse it (a new
    question does); nor does a deployment out of requests, as no deployment answers it."""
    model = {**openai_model(upstream), "requests_per_minute": 1}
    model |= {"input_cost_per_mtok": 10, "output_cost_per_mtok": 10}
    client = cached(limits=limits, models=[model])
    body = {**CHAT, "max_tokens": 100}
    usage = {"prompt_tokens": 40, "completion_tokens": 100, "total_tokens": 140}
    upstream.queue(Reply(body=chat_completion("long answer", usage=usage)))
    assert post(client, body).headers["x-ai-proxy-cache"] == "miss"
    for _ in range(3):
        again = post(client, body)
        assert again.status_code == 200, again.json
        assert again.headers["x-ai-proxy-cache"] == "hit"
        assert again.json["choices"][0]["message"]["content"] == "long answer"
    # A new question is refused: the spent window, or the deployment out of requests.
    other = post(client, {**body, "messages": [{"role": "user", "content": "Something new"}]})
    assert other.status_code in (429, 503), other.json
    assert len(upstream.requests) == 1


def test_a_hit_is_logged_and_counted(cached, caplog):
    client = cached()
    hits = metric("ai_proxy_cache_requests_total", result="hit")
    post(client)
    with caplog.at_level(logging.INFO, logger="ai_proxy.access"):
        post(client).close()  # the line is written when the answer has been sent
    (record,) = [r for r in caplog.records if r.name == "ai_proxy.access"]
    assert record.cache == "hit" and record.model == "gpt-test"
    assert not getattr(record, "prompt_tokens", None)
    assert metric("ai_proxy_cache_requests_total", result="hit") == hits + 1


def test_a_corrupt_entry_is_a_miss_counted_and_replaced(cached, upstream):
    client = cached()
    post(client)
    store = store_of(client)
    (slot,) = list(store._nodes)
    good = store._nodes[slot].data
    errors = metric("ai_proxy_cache_errors_total", op="corrupt")
    for damaged in (
        b"garbage",
        good[:-3],
        good.replace(b"hi there", b"hi thera"),
        encode("another-key", decode(slot, good)),
    ):
        store.write(slot, "gpt-test", damaged, ttl=60)
        answer = post(client)
        assert answer.status_code == 200 and answer.headers["x-ai-proxy-cache"] == "miss"
        assert answer.json["choices"][0]["message"]["content"] == "hi there"
    assert metric("ai_proxy_cache_errors_total", op="corrupt") == errors + 4
    assert post(client).headers["x-ai-proxy-cache"] == "hit"


def damaged_meta(good: bytes, slot: str, **meta) -> bytes:
    """`good` with its metadata line changed (the body and its checksum as they were)."""
    magic, line, body = good.split(b"\n", 2)
    fields = {**json.loads(line), **meta}
    return b"\n".join([magic, json.dumps(fields).encode(), body])


@pytest.mark.parametrize(
    "meta",
    [
        {"stored_at": float("nan")},
        {"stored_at": float("inf")},
        {"stored_at": -1e308},
        {"stored_at": 1e308},
        {"headers": {"x-ai-proxy-warning": "a\r\nSet-Cookie: x=1"}},
        {"deployment": "gpt\ntest"},
    ],
    ids=["nan", "inf", "long-ago", "future", "crlf-header", "crlf-deployment"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_impossible_metadata_is_a_corrupt_entry(cached, upstream, meta, stream):
    """The metadata line is not under the checksum: an entry whose metadata cannot be true or
    cannot be sent is a miss (it was a 500, or an Age of nonsense)."""
    client = cached()
    post(client)
    store = store_of(client)
    (slot,) = list(store._nodes)
    store.write(slot, "gpt-test", damaged_meta(store._nodes[slot].data, slot, **meta), ttl=60)
    errors = metric("ai_proxy_cache_errors_total", op="corrupt")
    answer = post(client, {**CHAT, "stream": stream})
    assert answer.status_code == 200 and answer.headers["x-ai-proxy-cache"] == "miss"
    assert b"hi there" in answer.get_data()
    assert metric("ai_proxy_cache_errors_total", op="corrupt") == errors + 1


ODD_MESSAGES = {
    "content-parts": {"role": "assistant", "content": [{"type": "text", "text": "hello there"}]},
    "object-arguments": {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}
        ],
    },
}


@pytest.mark.parametrize("shape", list(ODD_MESSAGES))
def test_an_answer_a_stream_cannot_be_replayed_from_is_not_stored(cached, upstream, shape):
    """Some servers send content as a list of parts, or arguments as an object: whole, the
    answer goes to the client as it came, but it is not stored (each streaming hit on it broke
    the connection after its headers, for the entry's whole TTL)."""
    answer = chat_completion()
    answer["choices"][0]["message"] = ODD_MESSAGES[shape]
    upstream.default = Reply(body=answer)
    client = cached()
    assert post(client).json["choices"][0]["message"] == ODD_MESSAGES[shape]
    streamed = post(client, {**CHAT, "stream": True})
    assert streamed.status_code == 200 and streamed.headers["x-ai-proxy-cache"] == "miss"
    assert streamed.get_data().rstrip().endswith(b"data: [DONE]")
    assert len(upstream.requests) == 2


def test_a_stored_answer_its_surface_cannot_replay_is_dropped_and_fetched_again(cached, upstream):
    """The backstop: whatever made a stored answer unreplayable (an older version stored it,
    another host wrote it), a streaming hit is made before its first byte; if it cannot be,
    the entry is dropped (counted as corrupt) and the request is a miss that stores anew."""
    client = cached()
    post(client)
    store = store_of(client)
    (slot,) = list(store._nodes)
    entry = decode(slot, store._nodes[slot].data)
    odd = chat_completion()
    odd["choices"][0]["message"] = ODD_MESSAGES["object-arguments"]
    bad = type(entry)(json.dumps(odd).encode(), entry.deployment, entry.provider, entry.stored_at)
    store.write(slot, "gpt-test", encode(slot, bad), ttl=60)
    errors = metric("ai_proxy_cache_errors_total", op="corrupt")
    streamed = post(client, {**CHAT, "stream": True})
    assert streamed.status_code == 200 and streamed.headers["x-ai-proxy-cache"] == "miss"
    assert b"hi there" in streamed.get_data()
    assert metric("ai_proxy_cache_errors_total", op="corrupt") == errors + 1
    assert post(client, {**CHAT, "stream": True}).headers["x-ai-proxy-cache"] == "hit"


def chunk_of(delta: dict, finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return json.dumps(
        {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    )


@pytest.mark.parametrize(
    ("deltas", "finish", "expected"),
    [
        (
            [
                {
                    "role": "assistant",
                    "content": None,
                    "function_call": {"name": "get_weather", "arguments": ""},
                },
                {"function_call": {"arguments": '{"city"'}},
                {"function_call": {"arguments": ': "Paris"}'}},
            ],
            "function_call",
            {"function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        ),
        (
            [
                {"role": "assistant", "audio": {"id": "audio_1", "transcript": "Hel"}},
                {"audio": {"transcript": "lo", "data": "AAAA"}},
                {"audio": {"data": "BBBB", "expires_at": 99}},
            ],
            "stop",
            {
                "audio": {
                    "id": "audio_1",
                    "transcript": "Hello",
                    "data": "AAAABBBB",
                    "expires_at": 99,
                }
            },
        ),
    ],
    ids=["legacy-function-call", "audio"],
)
def test_objects_streamed_in_pieces_are_stored_whole(cached, upstream, deltas, finish, expected):
    """A legacy `function_call` or `audio` comes in deltas whose text fields add up: the
    stored answer has them whole (it kept only the last piece, and served that)."""
    events = [*[chunk_of(d) for d in deltas], chunk_of({}, finish), "[DONE]"]
    upstream.default = Reply(events=[f"data: {e}" for e in events])
    client = cached()
    post(client, {**CHAT, "stream": True}).get_data()
    whole = post(client)
    assert whole.headers["x-ai-proxy-cache"] == "hit"
    message = whole.json["choices"][0]["message"]
    assert {name: message[name] for name in expected} == expected


def test_a_stream_that_ends_without_done_is_relayed_but_not_stored(cached, upstream):
    """The upstream closed cleanly after the finish chunk, before its usage chunk and [DONE]:
    the client gets the answer (and the proxy's [DONE]), but it was not seen to its proper
    end, so it is not stored (hits from it lacked their usage)."""
    events = chat_chunks(["one", "two"])  # role, one, two, finish, usage, [DONE]
    upstream.default = Reply(events=events[:4])
    client = cached()
    streamed = post(client, {**CHAT, "stream": True}).get_data(as_text=True)
    assert streamed.rstrip().endswith("data: [DONE]") and '"error"' not in streamed
    whole = post(client)
    assert whole.headers["x-ai-proxy-cache"] == "miss"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("scope", [None, "gpt-test"], ids=["all", "one-model"])
def test_an_answer_in_flight_during_a_delete_is_not_kept(cached, upstream, scope):
    """An operator empties the cache (say, after changing a deployment) while a request is
    upstream: its answer, read before the delete, is sent but not stored."""
    import threading

    upstream.default = Reply(body=chat_completion("old deployment answer"), hang=0.5)
    client = cached()
    other = client.application.test_client()
    other.environ_base.update(client.environ_base)
    flight = threading.Thread(target=lambda: post(other))
    flight.start()
    wait_until(lambda: len(upstream.requests) == 1)
    query = f"?model={scope}" if scope else ""
    deleted = client.delete("/admin/cache" + query, headers={"Authorization": f"Bearer {ADMIN}"})
    assert deleted.status_code == 200
    flight.join()
    upstream.default = Reply(body=chat_completion("new deployment answer"))
    after = post(client)
    assert after.headers["x-ai-proxy-cache"] == "miss"
    assert after.json["choices"][0]["message"]["content"] == "new deployment answer"


def test_a_hit_refused_by_its_rate_limit_is_not_a_hit(cached, upstream):
    client = cached(limits={"requests_per_minute": 2})
    post(client)
    assert post(client).headers["x-ai-proxy-cache"] == "hit"
    hits = metric("ai_proxy_cache_requests_total", result="hit")
    refused = post(client)
    assert refused.status_code == 429
    assert "x-ai-proxy-cache" not in refused.headers
    assert metric("ai_proxy_cache_requests_total", result="hit") == hits


def test_an_unreachable_redis_is_a_miss_never_an_error(cached, upstream, caplog):
    client = cached({"storage": f"redis://127.0.0.1:{free_port()}/0"})
    errors = metric("ai_proxy_cache_errors_total", op="read")
    with caplog.at_level(logging.WARNING):
        answers = [post(client) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert {a.headers["x-ai-proxy-cache"] for a in answers} == {"miss"}
    assert metric("ai_proxy_cache_errors_total", op="read") > errors
    assert any("cache storage" in r.getMessage() for r in caplog.records)


def test_admin_delete_empties_the_cache_or_one_model(cached, upstream):
    models = [openai_model(upstream), openai_model(upstream, name="other")]
    client = cached(models=models)
    other = {**CHAT, "model": "other"}
    post(client), post(client, other)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert client.delete("/admin/cache", headers={"Authorization": ""}).status_code == 401
    assert client.delete("/admin/cache").status_code == 403  # a client token
    deleted = client.delete("/admin/cache?model=gpt-test", headers=admin)
    assert deleted.status_code == 200 and deleted.json["model"] == "gpt-test"
    assert post(client).headers["x-ai-proxy-cache"] == "miss"
    assert post(client, other).headers["x-ai-proxy-cache"] == "hit"
    assert client.delete("/admin/cache", headers=admin).status_code == 200
    assert post(client, other).headers["x-ai-proxy-cache"] == "miss"


def test_admin_delete_without_a_cache_or_admin_token_is_404(make_app, config):
    config["auth"]["admin_token"] = ADMIN
    client = make_app(config).test_client()
    answer = client.delete("/admin/cache", headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 404 and answer.json["error"]["code"] == "cache_disabled"
    config["auth"].pop("admin_token")
    config["cache"] = {"enabled": True}
    client = make_app(config).test_client()
    assert client.delete("/admin/cache").status_code == 404


@pytest.mark.parametrize(
    ("section", "path"),
    [
        ({"storage": "mysql://x"}, "cache.storage"),
        ({"scope": "user"}, "cache.scope"),
        ({"ttl_seconds": 0}, "cache.ttl_seconds"),
        ({"max_memory_bytes": 10}, "cache.max_memory_bytes"),
        ({"enabled": "perhaps"}, "cache.enabled"),
        ({"size": 1}, "cache.size"),
    ],
)
def test_bad_cache_settings_name_their_path(make_app, section, path):
    from app.config import ConfigError

    with pytest.raises(ConfigError) as info:
        make_app({"cache": section})
    assert any(problem.startswith(path) for problem in info.value.problems), info.value.problems


def test_a_redis_uri_password_is_a_secret(make_app):
    app = make_app({"cache": {"enabled": True, "storage": "redis://:hunter22@127.0.0.1:9/0"}})
    with app.app_context():
        assert "hunter22" in proxy_state().config.secret_values()


def test_anthropic_answers_keep_the_same_text_whole_and_streamed(cached, upstream):
    client = cached()
    whole = post(client, MESSAGE, "/v1/messages")
    streamed = post(client, {**MESSAGE, "stream": True}, "/v1/messages")
    assert streamed.headers["x-ai-proxy-cache"] == "hit"
    events = [
        json.loads(line[6:])
        for line in streamed.get_data(as_text=True).splitlines()
        if line.startswith("data: ")
    ]
    text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
    assert text == whole.json["content"][0]["text"] == "hi there"
    assert events[-1]["type"] == "message_stop"


@pytest.mark.parametrize("depth", [100, 250, 300, 900])
def test_a_deeply_nested_body_is_answered_cached_or_not(cached, upstream, depth):
    """What the JSON reader accepted, the key accepts too; past MAX_DEPTH, a 400 for both."""
    deep: dict = {}
    inner = deep
    for _ in range(depth):
        inner["a"] = inner = {}
    body = json.dumps({**CHAT, "response_format": deep})
    client = cached()
    answers = [
        client.post("/v1/chat/completions", data=body, content_type="application/json")
        for _ in range(2)
    ]
    if depth + 2 > MAX_DEPTH:  # the body and response_format are two levels more
        assert [a.status_code for a in answers] == [400, 400]
        assert upstream.requests == []
        return
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[1].headers["x-ai-proxy-cache"] == "hit"


def test_a_form_that_rewrites_makes_each_hit_the_requests_own(cached, upstream, monkeypatch):
    """The hook the Responses API uses: a hit gets its own id, whole and streamed."""
    from app.blueprints.openai import ChatCompletions
    from app.cache import ChatForm

    class Stamped(ChatForm):
        rewrites = True

        def for_request(self, answer, call):
            return {**answer, "id": f"chatcmpl-{call.body['messages'][0]['content']}"}

    monkeypatch.setattr(ChatCompletions, "cache_form", Stamped())
    client = cached()
    assert post(client).json["id"] == "chatcmpl-stub"
    hit = post(client)
    assert hit.headers["x-ai-proxy-cache"] == "hit" and hit.json["id"] == "chatcmpl-Hello"
    streamed = post(client, STREAM)
    assert streamed.headers["x-ai-proxy-cache"] == "hit"
    assert b'"id":"chatcmpl-Hello"' in streamed.get_data()


def test_a_redis_that_never_answers_is_a_miss_within_its_timeouts(cached, upstream):
    """A storage that takes the connection and then says nothing: bounded, then left alone."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        client = cached({"storage": f"redis://127.0.0.1:{listener.getsockname()[1]}/0"})
        started = time.monotonic()
        answers = [post(client) for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3
        assert {a.headers["x-ai-proxy-cache"] for a in answers} == {"miss"}
        # One read waits for its socket timeout; the storage is then left alone for a second.
        assert time.monotonic() - started < 5
    finally:
        listener.close()
        for connection in held:
            connection.close()


RESPONSE_BODY = {"model": "gpt-test", "input": "Hello"}


def response_events(raw: bytes) -> list[dict]:
    return [
        json.loads(line[len(b"data: ") :])
        for line in raw.splitlines()
        if line.startswith(b"data: ") and line != b"data: [DONE]"
    ]


def test_a_responses_hit_refused_by_its_rate_limit_keeps_nothing(cached, upstream):
    """A hit's Response is kept once the hit is admitted: one refused (429) left a stored
    Response its client never got (a storage write for every refused request)."""
    client = cached(limits={"requests_per_minute": 2})
    post(client, RESPONSE_BODY, "/v1/responses")
    assert post(client, RESPONSE_BODY, "/v1/responses").headers["x-ai-proxy-cache"] == "hit"
    with client.application.app_context():
        kept = proxy_state().responses._entries
    before = len(kept)
    assert post(client, RESPONSE_BODY, "/v1/responses").status_code == 429
    assert len(kept) == before


def test_a_responses_hit_is_the_requests_own_response_kept_for_its_token(cached, upstream):
    client = cached()
    first = post(client, RESPONSE_BODY, "/v1/responses")
    second = post(client, RESPONSE_BODY, "/v1/responses")
    assert first.headers["x-ai-proxy-cache"] == "miss"
    assert second.headers["x-ai-proxy-cache"] == "hit"
    assert len(upstream.requests) == 1
    assert second.json["id"] != first.json["id"]
    assert second.json["output"][0]["content"] == first.json["output"][0]["content"]
    # The hit is stored as this request's own Response: it can be read and continued.
    kept = client.get(f"/v1/responses/{second.json['id']}")
    assert kept.status_code == 200 and kept.json["id"] == second.json["id"]


def test_a_responses_stream_is_replayed_from_a_whole_answer_and_stored_from_a_stream(
    cached, upstream
):
    client = cached()
    whole = post(client, RESPONSE_BODY, "/v1/responses")
    streamed = post(client, {**RESPONSE_BODY, "stream": True}, "/v1/responses")
    assert streamed.headers["x-ai-proxy-cache"] == "hit"
    events = response_events(streamed.data)
    kinds = [event["type"] for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == whole.json["output"][0]["content"][0]["text"]
    assert events[-1]["response"]["id"] != whole.json["id"]
    # Another body, streamed first: its completed Response is stored and serves a whole request.
    other = {"model": "gpt-test", "input": "Another"}
    fresh = post(client, {**other, "stream": True}, "/v1/responses")
    assert fresh.headers["x-ai-proxy-cache"] == "miss"
    completed = response_events(fresh.data)[-1]["response"]  # stored by its last event
    again = post(client, other, "/v1/responses")
    assert again.headers["x-ai-proxy-cache"] == "hit"
    assert again.json["output"] == completed["output"]
    assert len(upstream.requests) == 2


def test_a_continued_conversation_is_never_cached(cached, upstream):
    client = cached()
    first = post(client, RESPONSE_BODY, "/v1/responses")
    follow = {**RESPONSE_BODY, "previous_response_id": first.json["id"]}
    answers = [post(client, follow, "/v1/responses") for _ in range(2)]
    assert [a.headers["x-ai-proxy-cache"] for a in answers] == ["bypass", "bypass"]
    assert len(upstream.requests) == 3


LOGPROBS = {"tokens": ["hi", " there"], "token_logprobs": [-0.1, -0.2],
            "top_logprobs": [{"hi": -0.1}, {" there": -0.2}], "text_offset": [0, 2]}  # fmt: skip


def completion_answer() -> dict:
    answer = text_completion("hi there", model="m")
    answer["choices"][0]["logprobs"] = LOGPROBS
    return answer


def test_completion_logprobs_survive_both_forms(cached, upstream):
    """Asked for `logprobs`, a hit has them as a fresh answer does, streamed or whole (they were
    null in every replayed chunk, and null in a whole answer made from a stored stream)."""
    upstream.default = Reply(body=completion_answer())
    client = cached()
    body = {"model": "gpt-test", "prompt": "hi", "logprobs": 2}
    post(client, body, path="/v1/completions")
    streamed = post(client, {**body, "stream": True}, path="/v1/completions")
    assert streamed.headers["x-ai-proxy-cache"] == "hit"
    chunks = [
        json.loads(line[6:])
        for line in streamed.get_data(as_text=True).splitlines()
        if line.startswith("data: {")
    ]
    texts = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["text"]]
    assert [(t["text"], t["logprobs"]) for t in texts] == [("hi there", LOGPROBS)]

    # The other way: a stored stream, its logprobs gathered from each chunk.
    head = {"id": "cmpl-2", "object": "text_completion", "created": 1, "model": "m"}
    first = {k: v[:1] for k, v in LOGPROBS.items()}
    second = {k: v[1:] for k, v in LOGPROBS.items()}
    halves = [{"text": "hi", "logprobs": first}, {"text": " there", "logprobs": second}]
    events = [json.dumps({**head, "choices": [{"index": 0, **h}]}) for h in halves]
    events.append(
        json.dumps({**head, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    )
    upstream.default = Reply(events=[f"data: {e}" for e in [*events, "[DONE]"]])
    other = {**body, "prompt": "other"}
    post(client, {**other, "stream": True}, path="/v1/completions").get_data()
    whole = post(client, other, path="/v1/completions")
    assert whole.headers["x-ai-proxy-cache"] == "hit"
    assert whole.json["choices"][0]["logprobs"] == LOGPROBS


def test_a_vendors_top_level_fields_survive_both_forms(cached, upstream):
    """Perplexity's `citations`: a hit carries them, streamed or whole, as a fresh answer does."""
    answer = {**chat_completion(), "citations": ["https://a.example", "https://b.example"]}
    upstream.default = Reply(body=answer)
    client = cached()
    post(client)
    streamed = post(client, {**CHAT, "stream": True}).get_data(as_text=True)
    chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert all(c["citations"] == answer["citations"] for c in chunks)

    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "citations": answer["citations"]}  # fmt: skip
    events = [
        json.dumps({**head, "choices": [{"index": 0, "delta": {"content": "hi"}}]}),
        json.dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ]
    upstream.default = Reply(events=[f"data: {e}" for e in [*events, "[DONE]"]])
    other = {**CHAT, "messages": [{"role": "user", "content": "other"}]}
    post(client, {**other, "stream": True}).get_data()
    whole = post(client, other)
    assert whole.headers["x-ai-proxy-cache"] == "hit"
    assert whole.json["citations"] == answer["citations"]
