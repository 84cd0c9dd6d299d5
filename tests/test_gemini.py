"""The Gemini surface in-process: bad input of every kind gets a 400 in Google's error shape
naming the field (never a 500, never an upstream call), every error on its paths is Google's
shape, model ids with slashes route, and the key may come in the URL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from app import create_app
from tests.conftest import LOOPBACK, TOKEN, openai_model
from tests.stub_upstream import Reply, StubUpstream, chat_chunks, chat_completion

USER = {"role": "user", "parts": [{"text": "hi"}]}
GEN = {"contents": [USER]}
CALL = {"functionCall": {"name": "f", "args": {"a": 1}}}
ANSWER = {"functionResponse": {"name": "f", "response": {"r": 1}}}
PATH = "/v1beta/models/gpt-test:generateContent"
STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[StubUpstream]:
    # One stub and one app for the module (hundreds of cases); each test starts them clean.
    stub = StubUpstream()
    yield stub
    stub.close()


@pytest.fixture(autouse=True)
def clean_stub(upstream) -> Iterator[None]:
    default = upstream.default
    yield
    upstream.default = default
    upstream.handler = None
    upstream.requests.clear()
    while not upstream.replies.empty():
        upstream.replies.get_nowait()


@pytest.fixture(scope="module")
def app(upstream):
    return create_app(
        {
            "env": {},
            "config_path": None,
            "default_model": None,
            "auth": {
                "tokens": [
                    {"name": "team-a", "token": TOKEN},
                    {"name": "narrow", "token": "sk-narrow", "models": ["echo"]},
                ]
            },
            "models": [
                {"name": "echo", "provider": "echo"},
                openai_model(upstream),
                openai_model(upstream, "openrouter/*"),
                {
                    "name": "gem",
                    "provider": "google",
                    "base_url": upstream.url + "/v1beta",
                    "token": "goog-up-secret",
                    "model": "gemini-up",
                },
            ],
            "server": {"max_body_bytes": 20_000},
            "retry": {"max_retries": 0},
            # A failure a test provokes must not cool a deployment down for the next test.
            "routing": {"cooldown_seconds": 0},
        }
    )


@pytest.fixture
def client(app):
    client = app.test_client()
    client.environ_base.update({"HTTP_X_GOOG_API_KEY": TOKEN, **LOOPBACK})
    return client


def google_error(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == status
    assert error["status"] == STATUS[status]
    assert isinstance(error["message"], str) and error["message"]
    return error


def contents(*turns: dict) -> dict:
    return {"contents": list(turns)}


BAD = {
    "no-contents": ({}, "contents"),
    "empty-contents": ({"contents": []}, "contents"),
    "contents-string": ({"contents": "hi"}, "contents"),
    "contents-of-strings": ({"contents": ["hi"]}, "contents[0]"),
    "role-system": (contents({"role": "system", "parts": [{"text": "x"}]}), "contents[0].role"),
    "role-assistant": (contents({"role": "assistant", "parts": [{"text": "x"}]}), "role"),
    "role-number": (contents({"role": 1, "parts": [{"text": "x"}]}), "contents[0].role"),
    "no-parts": (contents({"role": "user"}), "contents[0].parts"),
    "empty-parts": (contents({"role": "user", "parts": []}), "contents[0].parts"),
    "parts-object": (contents({"role": "user", "parts": {"text": "x"}}), "contents[0].parts"),
    "part-string": (contents({"role": "user", "parts": ["x"]}), "contents[0].parts[0]"),
    "part-empty": (contents({"role": "user", "parts": [{}]}), "contents[0].parts[0]"),
    "part-unknown": (contents({"role": "user", "parts": [{"video": {}}]}), "parts[0]"),
    "part-two-kinds": (
        contents({"role": "user", "parts": [{"text": "a", "inlineData": {}}]}),
        "parts[0]",
    ),
    "text-number": (contents({"role": "user", "parts": [{"text": 5}]}), "parts[0]"),
    "text-null": (contents({"role": "user", "parts": [{"text": None}]}), "parts[0]"),
    "inline-without-data": (
        contents({"role": "user", "parts": [{"inlineData": {"mimeType": "image/png"}}]}),
        "parts[0]",
    ),
    "call-without-name": (contents({"role": "model", "parts": [{"functionCall": {}}]}), "parts"),
    "call-args-list": (
        contents({"role": "model", "parts": [{"functionCall": {"name": "f", "args": [1]}}]}),
        "parts[0]",
    ),
    "response-not-object": (
        contents({"role": "user", "parts": [{"functionResponse": {"name": "f", "response": 1}}]}),
        "parts[0]",
    ),
    "response-without-call": (contents({"role": "user", "parts": [ANSWER]}), "functionResponse"),
    "response-to-another-call": (
        contents(
            USER,
            {"role": "model", "parts": [CALL]},
            {"role": "user", "parts": [{"functionResponse": {"name": "g", "response": {}}}]},
        ),
        "contents[2].parts[0].functionResponse",
    ),
    "call-without-response": (
        contents(USER, {"role": "model", "parts": [CALL]}, USER),
        "contents[1].parts[0].functionCall",
    ),
    "call-then-model-again": (
        contents(
            USER, {"role": "model", "parts": [CALL]}, {"role": "model", "parts": [{"text": "x"}]}
        ),
        "contents[1].parts[0].functionCall",
    ),
    "one-of-two-calls-answered": (
        contents(
            USER,
            {"role": "model", "parts": [CALL, {"functionCall": {"name": "g"}}]},
            {"role": "user", "parts": [ANSWER]},
        ),
        "contents[1].parts[1].functionCall",
    ),
    "answered-twice": (
        contents(
            USER, {"role": "model", "parts": [CALL]}, {"role": "user", "parts": [ANSWER, ANSWER]}
        ),
        "contents[2].parts[1].functionResponse",
    ),
    "only-a-thought": (
        contents({"role": "user", "parts": [{"text": "x", "thought": True}]}),
        "contents",
    ),
    "thought-string": (
        contents({"role": "user", "parts": [{"text": "x", "thought": "yes"}]}),
        "parts[0]",
    ),
    "temperature-high": ({**GEN, "generationConfig": {"temperature": 3}}, "temperature"),
    "temperature-string": ({**GEN, "generationConfig": {"temperature": "1"}}, "temperature"),
    "temperature-bool": ({**GEN, "generationConfig": {"temperature": True}}, "temperature"),
    "top-p-high": ({**GEN, "generationConfig": {"topP": 1.5}}, "topP"),
    "top-k-zero": ({**GEN, "generationConfig": {"topK": 0}}, "topK"),
    "max-output-zero": ({**GEN, "generationConfig": {"maxOutputTokens": 0}}, "maxOutputTokens"),
    "max-output-float": ({**GEN, "generationConfig": {"maxOutputTokens": 2.5}}, "maxOutputTokens"),
    "max-output-string": ({**GEN, "generationConfig": {"maxOutputTokens": "9"}}, "maxOutput"),
    "candidates-many": ({**GEN, "generationConfig": {"candidateCount": 99}}, "candidateCount"),
    "stop-numbers": ({**GEN, "generationConfig": {"stopSequences": [1]}}, "stopSequences"),
    "stop-string": ({**GEN, "generationConfig": {"stopSequences": "x"}}, "stopSequences"),
    "response-schema-string": (
        {**GEN, "generationConfig": {"responseSchema": "x"}},
        "responseSchema",
    ),
    "config-list": ({**GEN, "generationConfig": []}, "generationConfig"),
    "system-string": ({**GEN, "systemInstruction": "be brief"}, "systemInstruction"),
    "system-no-parts": ({**GEN, "systemInstruction": {"parts": []}}, "systemInstruction"),
    "tools-object": ({**GEN, "tools": {"functionDeclarations": []}}, "tools"),
    "function-no-name": ({**GEN, "tools": [{"functionDeclarations": [{}]}]}, "tools[0]"),
    "function-bad-name": (
        {**GEN, "tools": [{"functionDeclarations": [{"name": "a b"}]}]},
        "tools[0]",
    ),
    "function-name-newline": (
        {**GEN, "tools": [{"functionDeclarations": [{"name": "f\n"}]}]},
        "tools[0]",
    ),
    "function-params-list": (
        {**GEN, "tools": [{"functionDeclarations": [{"name": "f", "parameters": []}]}]},
        "tools[0]",
    ),
    "mode-unknown": (
        {**GEN, "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
        "mode",
    ),
    "allowed-string": (
        {**GEN, "toolConfig": {"functionCallingConfig": {"allowedFunctionNames": "f"}}},
        "allowedFunctionNames",
    ),
    "body-list": ([USER], None),
    "body-string": ("hi", None),
}


@pytest.mark.parametrize(("body", "param"), BAD.values(), ids=BAD)
@pytest.mark.parametrize(
    "target",
    ["gpt-test:generateContent", "gem:streamGenerateContent?alt=sse"],
    ids=["translated", "passed-through"],
)
def test_bad_input_is_a_400_naming_the_field_and_no_upstream_call(
    client, upstream, body, param, target
):
    response = client.post(f"/v1beta/models/{target}", json=body)
    error = google_error(response, 400)
    if param:
        assert param in error["message"]
    assert upstream.requests == []


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"contents": [{"parts": [{"text": NaN}]}]}',
        b'{"contents": [], "x": Infinity}',
        b'{"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"temperature": 1e999}}',
        b"",
        b"\xff\xfe",
        b"[" * 100_00 + b"]" * 100_00,
    ],
    ids=["broken", "nan", "infinity", "overflow", "empty", "not-utf8", "deep"],
)
def test_what_is_not_json_is_a_400(client, upstream, raw):
    response = client.post(PATH, data=raw, content_type="application/json")
    google_error(response, 400)
    assert upstream.requests == []


def test_a_body_over_the_limit_is_a_413(client, upstream):
    body = contents({"role": "user", "parts": [{"text": "x" * 30_000}]})
    google_error(client.post(PATH, json=body), 413)
    assert upstream.requests == []


@pytest.mark.parametrize(
    ("headers", "query"),
    [({}, ""), ({"x-goog-api-key": "wrong"}, ""), ({}, "?key=wrong"), ({}, "?key=")],
    ids=["missing", "wrong-header", "wrong-key", "empty-key"],
)
def test_no_or_a_wrong_key_is_a_401(app, headers, query):
    client = app.test_client()
    response = client.post(PATH + query, json=GEN, headers=headers, environ_base=LOOPBACK)
    google_error(response, 401)
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="ai-proxy"'
    assert "wrong" not in response.get_data(as_text=True)


def test_the_key_may_come_in_the_url(app, upstream):
    upstream.queue(Reply(body=chat_completion("from the url")))
    client = app.test_client()
    response = client.post(PATH + f"?key={TOKEN}", json=GEN, environ_base=LOOPBACK)
    assert response.status_code == 200
    assert response.get_json()["candidates"][0]["content"]["parts"] == [{"text": "from the url"}]
    assert TOKEN not in upstream.requests[0].path


def test_a_header_key_wins_over_the_url(app):
    # A wrong key in the URL does not spoil a right one in a header, and is never echoed.
    response = app.test_client().post(
        PATH.replace("gpt-test", "echo") + "?key=wrong",
        json=GEN,
        headers={"x-goog-api-key": TOKEN},
        environ_base=LOOPBACK,
    )
    assert response.status_code == 200


def test_a_model_outside_the_allow_list_is_a_403(client):
    response = client.post(PATH, json=GEN, headers={"x-goog-api-key": "sk-narrow"})
    google_error(response, 403)


@pytest.mark.parametrize(
    "path",
    [
        "/v1beta/models/nope:generateContent",
        "/v1beta/models/gpt-test:explode",
        "/v1beta/models/gpt-test",
        "/v1beta/models/:generateContent",
        "/v1beta/tunedModels/x:generateContent",
        "/v1beta/nothing",
    ],
)
def test_unknown_models_and_paths_are_404s_or_400s(client, upstream, path):
    response = client.post(path, json=GEN)
    assert response.status_code in (400, 404, 405)
    google_error(response, response.status_code if response.status_code != 405 else 404)
    assert upstream.requests == []


def test_a_get_on_a_method_is_a_405(client):
    response = client.get(PATH)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.get_json()["error"]["code"] == 405


@pytest.mark.parametrize(
    "model_id", ["m" * 300, "openrouter/../etc:generateContent", "openrouter/%2e%2e/x"]
)
def test_bad_model_ids_are_refused(client, upstream, model_id):
    target = model_id if ":" in model_id else model_id + ":generateContent"
    response = client.post(f"/v1beta/models/{target}", json=GEN)
    assert 400 <= response.status_code < 500
    assert response.get_json()["error"]["status"] in ("INVALID_ARGUMENT", "NOT_FOUND")
    assert upstream.requests == []


@pytest.mark.parametrize(
    "path",
    [
        "/v1beta/models/openrouter/deepseek/deepseek-chat:generateContent",
        "/v1beta/models/openrouter%2Fdeepseek%2Fdeepseek-chat:generateContent",
        "/v1beta/models/openrouter/deepseek/deepseek-chat%3AgenerateContent",
        "/v1/models/openrouter/deepseek/deepseek-chat:generateContent",
    ],
)
def test_model_ids_with_slashes_route(client, upstream, path):
    upstream.queue(Reply(body=chat_completion("routed")))
    response = client.post(path, json=GEN)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert upstream.requests[0].json()["model"] == "deepseek/deepseek-chat"


def test_the_upstreams_own_failure_is_a_google_error(client, upstream):
    upstream.queue(Reply(status=500, body={"error": {"message": "boom", "type": "server_error"}}))
    error = google_error(client.post(PATH, json=GEN), 502)
    assert upstream.url not in error["message"]


def test_a_google_deployment_gets_the_body_as_sent(client, upstream):
    answer = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1},
    }
    upstream.queue(Reply(body=answer))
    body = {**GEN, "safetySettings": [{"category": "x", "threshold": "y"}], "custom": 1}
    response = client.post("/v1beta/models/gem:generateContent", json=body)
    assert response.status_code == 200
    assert response.get_json() == answer
    (record,) = upstream.requests
    assert record.path == "/v1beta/models/gemini-up:generateContent"
    assert record.json() == body
    headers = {k.lower(): v for k, v in record.headers.items()}
    assert headers["x-goog-api-key"] == "goog-up-secret"
    assert TOKEN not in json.dumps(record.headers)


def test_translation_warns_of_what_it_drops(client, upstream):
    upstream.queue(Reply(body=chat_completion()))
    body = {
        **GEN,
        "generationConfig": {"topK": 3, "temperature": 0.5},
        "tools": [{"googleSearch": {}}],
        "safetySettings": [{"category": "x"}],
    }
    response = client.post(PATH, json=body)
    assert response.status_code == 200
    warning = response.headers["x-ai-proxy-warning"]
    assert "topK" in warning and "googleSearch" in warning and "safetySettings" in warning
    sent = upstream.requests[0].json()
    assert sent["temperature"] == 0.5 and "top_k" not in sent and "tools" not in sent


def test_a_stream_without_alt_is_a_json_array(client, upstream):
    upstream.queue(Reply(events=chat_chunks(["a", "b"])))
    response = client.post("/v1beta/models/gpt-test:streamGenerateContent", json=GEN)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    parsed = json.loads(response.get_data(as_text=True))
    text = "".join(
        p.get("text", "") for r in parsed for p in r["candidates"][0]["content"]["parts"]
    )
    assert text == "a b"
    assert parsed[-1]["usageMetadata"]["promptTokenCount"] == 3


@pytest.mark.parametrize("alt", ["", "?alt=sse"], ids=["array", "sse"])
def test_an_emoji_split_across_deltas_streams_whole(client, upstream, alt):
    """Servers written in JavaScript may split an emoji's surrogate pair across two deltas:
    each half is written escaped (it has no UTF-8 form), and the client joins them. The stream
    ended with a 500 instead, its text lost."""
    head = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    pieces = ["Hi \ud83d", "\ude00 there"]
    events = [
        json.dumps({**head, "choices": [{"index": 0, "delta": {"content": piece}}]})
        for piece in pieces
    ]
    events.append(
        json.dumps({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    )
    upstream.queue(Reply(events=[f"data: {e}" for e in [*events, "[DONE]"]]))
    response = client.post(f"/v1beta/models/gpt-test:streamGenerateContent{alt}", json=GEN)
    raw = response.get_data(as_text=True)
    if alt:
        parsed = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
    else:
        parsed = json.loads(raw)
    assert all("error" not in r for r in parsed), raw
    text = "".join(
        p.get("text", "") for r in parsed for p in r["candidates"][0]["content"]["parts"]
    )
    assert text.encode("utf-16", "surrogatepass").decode("utf-16") == "Hi \U0001f600 there"
    assert parsed[-1]["candidates"][0]["finishReason"] == "STOP"


def test_count_tokens_estimates_without_a_google_deployment(client, upstream):
    response = client.post("/v1beta/models/gpt-test:countTokens", json=contents(USER))
    assert response.get_json() == {"totalTokens": 1}
    inner = {"generateContentRequest": {**GEN, "model": "models/gpt-test"}}
    response = client.post("/v1beta/models/gpt-test:countTokens", json=inner)
    assert response.get_json() == {"totalTokens": 1}
    assert upstream.requests == []


def test_count_tokens_names_the_deployments_model_upstream(client, upstream):
    upstream.queue(Reply(body={"totalTokens": 7}))
    inner = {"generateContentRequest": {**GEN, "model": "models/gem"}}
    response = client.post("/v1beta/models/gem:countTokens", json=inner)
    assert response.get_json() == {"totalTokens": 7}
    sent = upstream.requests[0].json()
    assert sent["generateContentRequest"]["model"] == "models/gemini-up"


def test_the_list_is_the_tokens_own(client):
    narrow = client.get("/v1beta/models", headers={"x-goog-api-key": "sk-narrow"}).get_json()
    assert [m["name"] for m in narrow["models"]] == ["models/echo"]
    google_error(client.get("/v1beta/models?pageSize=x"), 400)
    google_error(client.get("/v1beta/models/gem", headers={"x-goog-api-key": "sk-narrow"}), 403)
    google_error(client.get("/v1beta/models/nope"), 404)


def test_the_sdks_v1_list_is_geminis_and_openais_stays(client):
    sdk = client.get("/v1/models", headers={"x-goog-api-client": "google-genai-sdk/3.6.1"})
    assert "models/echo" in [m["name"] for m in sdk.get_json()["models"]]
    openai = client.get("/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert openai.get_json()["object"] == "list"


def test_a_post_to_an_openai_model_path_is_still_a_405(client):
    response = client.post("/v1/models/gpt-test", json=GEN, headers={"x-goog-api-key": TOKEN})
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    assert set(response.get_json()["error"]) == {"message", "type", "param", "code"}


def test_function_responses_pair_with_their_calls_by_id_then_name(client, upstream):
    upstream.queue(Reply(body=chat_completion()))
    calls = [
        {"functionCall": {"name": "f", "args": {"n": 1}, "id": "a"}},
        {"functionCall": {"name": "f", "args": {"n": 2}, "id": "b"}},
        {"functionCall": {"name": "g", "args": {}}},
    ]
    answers = [
        {"functionResponse": {"name": "f", "id": "b", "response": {"r": 2}}},
        {"functionResponse": {"name": "g", "id": "unknown", "response": {"r": 3}}},
        {"functionResponse": {"name": "f", "id": "a", "response": {"r": 1}}},
    ]
    body = contents(USER, {"role": "model", "parts": calls}, {"role": "user", "parts": answers})
    assert client.post(PATH, json=body).status_code == 200
    messages = upstream.requests[0].json()["messages"]
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert ids[:2] == ["a", "b"]
    tools = [(m["tool_call_id"], json.loads(m["content"])) for m in messages[2:]]
    assert tools == [("b", {"r": 2}), (ids[2], {"r": 3}), ("a", {"r": 1})]


SNAKE = {
    "system_instruction": {"parts": [{"text": "be brief"}]},
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "what is this?"},
                {"inline_data": {"mime_type": "image/png", "data": "AAAA"}},
            ],
        }
    ],
    "generation_config": {"max_output_tokens": 9, "stop_sequences": ["."], "top_p": 0.5},
    "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {"a_b": 1}}]}],
    "tool_config": {"function_calling_config": {"mode": "ANY"}},
}


def test_snake_case_field_names_are_read_as_googles_rest_api_reads_them(client, upstream):
    upstream.queue(Reply(body=chat_completion()))
    assert client.post(PATH, json=SNAKE).status_code == 200
    sent = upstream.requests[0].json()
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    image = sent["messages"][1]["content"][1]
    assert image["image_url"]["url"] == "data:image/png;base64,AAAA"
    assert (sent["max_tokens"], sent["stop"], sent["top_p"]) == (9, ["."], 0.5)
    assert sent["tools"][0]["function"]["parameters"] == {"a_b": 1}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "f"}}


def test_snake_case_goes_to_google_in_camel_case(client, upstream):
    answer = {"candidates": [{"content": {"role": "model", "parts": [{"text": "ok"}]}}]}
    upstream.queue(Reply(body=answer))
    assert client.post("/v1beta/models/gem:generateContent", json=SNAKE).status_code == 200
    sent = upstream.requests[0].json()
    assert sent["systemInstruction"] == SNAKE["system_instruction"]
    assert sent["contents"][0]["parts"][1] == {
        "inlineData": {"mimeType": "image/png", "data": "AAAA"}
    }
    assert sent["generationConfig"]["maxOutputTokens"] == 9
    assert sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == {"a_b": 1}


def test_the_proxys_own_quota_is_a_resource_exhausted(make_app):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN, "requests_per_minute": 1}]},
            "models": [{"name": "echo", "provider": "echo"}],
        }
    )
    client = app.test_client()
    headers = {"x-goog-api-key": TOKEN}
    path = "/v1beta/models/echo:generateContent"
    assert client.post(path, json=GEN, headers=headers, environ_base=LOOPBACK).status_code == 200
    response = client.post(path, json=GEN, headers=headers, environ_base=LOOPBACK)
    error = google_error(response, 429)
    assert int(response.headers["Retry-After"]) >= 1
    assert error["details"][0]["reason"] == "rate_limit_exceeded"


def test_every_deployment_down_is_unavailable(make_app, upstream):
    upstream.default = Reply(status=503, body={"error": {"message": "down"}})
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [openai_model(upstream)],
            "retry": {"max_retries": 0},
            "routing": {"cooldown_seconds": 60},
        }
    )
    client = app.test_client()
    client.environ_base.update({"HTTP_X_GOOG_API_KEY": TOKEN, **LOOPBACK})
    google_error(client.post(PATH, json=GEN), 502)
    google_error(client.post(PATH, json=GEN), 503)


NESTED = "@"  # where the deep value goes in a body's JSON text


def nested(depth: int) -> str:
    """A schema `depth` arrays deep, as JSON text (json.dumps itself would run out of stack)."""
    return '{"items":' * depth + '{"type":"STRING"}' + "}" * depth


@pytest.mark.parametrize("depth", [400, 960])
@pytest.mark.parametrize(
    ("method", "where"),
    [
        ("generateContent", "parameters"),
        ("generateContent", "responseSchema"),
        ("countTokens", "parameters"),
        ("streamGenerateContent?alt=sse", "args"),
    ],
)
def test_a_body_nested_too_deep_is_a_400(client, upstream, depth, method, where):
    body: dict = {**GEN}
    if where == "parameters":
        body["tools"] = [{"functionDeclarations": [{"name": "f", "parameters": NESTED}]}]
    elif where == "responseSchema":
        body["generationConfig"] = {"responseSchema": NESTED}
    else:
        call = {"functionCall": {"name": "f", "args": NESTED}}
        body = contents(
            USER, {"role": "model", "parts": [call]}, {"role": "user", "parts": [ANSWER]}
        )
    raw = json.dumps(body).replace(json.dumps(NESTED), nested(depth))
    response = client.post(
        f"/v1beta/models/gpt-test:{method}", data=raw, content_type="application/json"
    )
    google_error(response, 400)
    assert upstream.requests == []


THINKING = {**GEN, "generationConfig": {"thinkingConfig": {"includeThoughts": True}}}


def reasoning_chunks() -> list[str]:
    base = {"id": "chatcmpl-r", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    deltas = [{"role": "assistant"}, {"reasoning_content": "Let me think."}, {"content": "42"}]
    chunks = [{**base, "choices": [{"index": 0, "delta": d}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return [f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"]


@pytest.mark.parametrize("include", [True, False])
def test_reasoning_comes_back_as_thoughts_when_asked_for(client, upstream, include):
    body = THINKING if include else GEN
    message = {"role": "assistant", "content": "42", "reasoning_content": "Let me think."}
    whole = chat_completion()
    whole["choices"][0]["message"] = message
    upstream.queue(Reply(body=whole), Reply(events=reasoning_chunks()))
    answer = client.post(PATH, json=body).get_json()
    thought = {"text": "Let me think.", "thought": True}
    parts = answer["candidates"][0]["content"]["parts"]
    assert parts == ([thought, {"text": "42"}] if include else [{"text": "42"}])
    streamed = client.post(PATH.replace("generateContent", "streamGenerateContent"), json=body)
    parts = [
        p for r in json.loads(streamed.get_data()) for p in r["candidates"][0]["content"]["parts"]
    ]
    assert (thought in parts) == include
    assert "".join(p["text"] for p in parts if not p.get("thought")) == "42"
    assert "thinkingConfig" not in (streamed.headers.get("x-ai-proxy-warning") or "")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_chat_refusal_is_said_as_text(client, upstream, stream):
    """Gemini has no refusal of its own: the model's words are the answer's text (it was an
    empty text part, so the SDK's `.text` said nothing)."""
    if stream:
        upstream.queue(Reply(events=[
            'data: {"choices": [{"index": 0, "delta": {"refusal": "I can\'t help."}}]}',
            'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}',
            "data: [DONE]",
        ]))  # fmt: skip
        path = "/v1beta/models/gpt-test:streamGenerateContent"
    else:
        answer = chat_completion()
        answer["choices"][0]["message"] = {
            "role": "assistant",
            "content": None,
            "refusal": "I can't help.",
        }
        upstream.queue(Reply(body=answer))
        path = "/v1beta/models/gpt-test:generateContent"
    body = client.post(path, json=GEN).get_json()
    responses = body if stream else [body]
    text = "".join(
        p.get("text", "") for r in responses for p in r["candidates"][0]["content"]["parts"]
    )
    assert text == "I can't help."


def test_the_list_holds_only_models_generatecontent_can_use(make_app, upstream):
    """Embedding and image models answer no generateContent, and a wildcard's pattern names
    no model: none of them is listed, and a lookup of one is a 404."""
    app = make_app(
        {
            "auth": {"tokens": [{"name": "a", "token": TOKEN}]},
            "models": [
                openai_model(upstream, "gpt"),
                {**openai_model(upstream, "emb"), "kind": "embedding"},
                {**openai_model(upstream, "img"), "kind": "image"},
                openai_model(upstream, "openrouter/*"),
            ],
        }
    )
    client = app.test_client()
    client.environ_base.update({"HTTP_X_GOOG_API_KEY": TOKEN, **LOOPBACK})
    names = [m["name"] for m in client.get("/v1beta/models").get_json()["models"]]
    assert names == ["models/gpt"]
    for model in ("emb", "img", "openrouter/*"):
        assert client.get(f"/v1beta/models/{model}").status_code == 404, model
    # A model id through the wildcard is one: listed when looked up.
    assert client.get("/v1beta/models/openrouter/some-model").status_code == 200


@pytest.mark.parametrize("path", ["/v1beta/models/openrouter/*:generateContent"])
def test_a_wildcard_pattern_is_not_a_model_to_call(client, upstream, path):
    """Asked for by its own name, a wildcard deployment sent `*` upstream as the model."""
    response = client.post(path, json=GEN)
    assert response.status_code == 400
    assert response.get_json()["error"]["status"] == "INVALID_ARGUMENT"
    assert upstream.requests == []
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "openrouter/*", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert chat.status_code == 400 and upstream.requests == []
