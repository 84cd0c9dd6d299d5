"""Request bodies: the size limit holds for chunked bodies too; non-finite numbers are refused."""

from __future__ import annotations

import http.client
import json
import re

import pytest
import responses

from tests.conftest import LOOPBACK, TOKEN

LIMIT = 4096
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def chat_body(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    empty = json.dumps({"model": "echo", "messages": [{"role": "user", "content": ""}]})
    body = json.dumps(
        {"model": "echo", "messages": [{"role": "user", "content": "x" * (size - len(empty))}]}
    ).encode()
    assert len(body) == size
    return body


@pytest.fixture(scope="module")
def limited_proxy(tmp_path_factory):
    import yaml

    from tests.servers import ProxyServer

    path = tmp_path_factory.mktemp("bodies") / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "server": {"max_body_bytes": LIMIT},
                "auth": {"tokens": [{"name": "a", "token": TOKEN}]},
                "models": [{"name": "echo", "provider": "echo"}],
            }
        )
    )
    server = ProxyServer(path).start()
    yield server
    server.stop()


def send(port: int, body: bytes, chunked: bool, piece: int = 1000) -> tuple[int, dict]:
    """POST through http.client: chunked (no Content-Length) or with a Content-Length."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {**AUTH, "Content-Type": "application/json"}
        try:
            if chunked:
                pieces = (body[i : i + piece] for i in range(0, len(body), piece))
                connection.request(
                    "POST",
                    "/v1/chat/completions",
                    body=pieces,
                    headers=headers,
                    encode_chunked=True,
                )
            else:
                connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            # The proxy answered 413 before the body's end and closed: its answer is read
            # below, as urllib3 does for an early answer.
            pass
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
@pytest.mark.parametrize(
    ("size", "status"),
    [(LIMIT - 1, 200), (LIMIT, 200), (LIMIT + 1, 413), (LIMIT + 1000, 413), (LIMIT * 50, 413)],
)
def test_body_limit_through_gunicorn(limited_proxy, chunked, size, status):
    got, answer = send(limited_proxy.port, chat_body(size), chunked)
    assert got == status, answer
    if status == 413:
        assert answer["error"]["code"] == "request_too_large"
    else:
        assert answer["choices"][0]["message"]["content"].startswith("xxx")


def test_chunked_body_in_one_byte_pieces(limited_proxy):
    assert send(limited_proxy.port, chat_body(LIMIT + 1), chunked=True, piece=1)[0] == 413
    assert send(limited_proxy.port, chat_body(LIMIT), chunked=True, piece=7)[0] == 200


def test_the_server_keeps_serving_after_a_refused_chunked_body(limited_proxy):
    for _ in range(3):
        assert send(limited_proxy.port, chat_body(LIMIT * 4), chunked=True)[0] == 413
    assert send(limited_proxy.port, chat_body(100), chunked=True)[0] == 200


def test_chunked_body_over_the_limit_in_the_app(make_app):
    """The same through the WSGI app: a stream without a length, as gunicorn hands it over."""
    app = make_app(
        {
            "server": {"max_body_bytes": LIMIT},
            "auth": {"tokens": [{"name": "a", "token": TOKEN}]},
            "models": [{"name": "echo", "provider": "echo"}],
        }
    )
    client = app.test_client()
    for size, status in ((LIMIT, 200), (LIMIT + 1, 413)):
        import io

        response = client.post(
            "/v1/chat/completions",
            input_stream=io.BytesIO(chat_body(size)),
            headers={**AUTH, "Content-Type": "application/json"},
            environ_overrides={**LOOPBACK, "wsgi.input_terminated": True},
        )
        assert response.status_code == status, response.json


# --- non-finite numbers ----------------------------------------------------------------------

NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1E+309"]
USER = '[{"role": "user", "content": "hi"}]'
PLACES = {
    "/v1/chat/completions": [
        '{"model": "gpt-test", "messages": MSGS, "temperature": {n}}',
        '{"model": "gpt-test", "messages": MSGS, "logit_bias": {"50256": {n}}}',
        '{"model": "gpt-test", "messages": MSGS, "tools": [{"type": "function", "function": '
        '{"name": "f", "parameters": {"type": "object", "default": [1, {"a": [{n}]}]}}}]}',
        '{"model": "gpt-test", "messages": [{"role": "user", "content": "hi", "x": {n}}]}',
        '{"model": "gpt-test", "messages": MSGS, "metadata": {"deep": [[[[{n}]]]]}}',
    ],
    "/v1/completions": ['{"model": "gpt-test", "prompt": "hi", "top_p": {n}}'],
    "/v1/embeddings": ['{"model": "gpt-test", "input": "hi", "dimensions": {n}}'],
    "/v1/messages": ['{"model": "gpt-test", "max_tokens": 5, "messages": MSGS, "top_k": {n}}'],
    "/v1/messages/count_tokens": ['{"model": "gpt-test", "messages": MSGS, "x": [{n}]}'],
    "/image": ['{"model": "gpt-test", "prompt": "a cat", "size": {n}}'],
    "/v1/images/generations": ['{"model": "gpt-test", "prompt": "a cat", "n": {n}}'],
}
CASES = [
    pytest.param(
        path, template.replace("MSGS", USER).replace("{n}", number), id=f"{path}-{i}-{number}"
    )
    for path, templates in PLACES.items()
    for i, template in enumerate(templates)
    for number in NON_FINITE
]


@pytest.mark.parametrize(("path", "body"), CASES)
def test_non_finite_numbers_are_refused_not_forwarded(client, path, body):
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.POST, re.compile(r".*"), json={}, status=500)
        response = client.post(path, data=body, headers={"Content-Type": "application/json"})
        assert len(mock.calls) == 0
    assert response.status_code == 400, response.get_data(as_text=True)
    if path.startswith("/v1/messages"):
        assert response.json["error"]["type"] == "invalid_request_error"
    else:
        assert response.json["error"]["code"] == "invalid_json"


def test_large_finite_numbers_pass(client):
    body = '{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "x": 1e308}'
    response = client.post("/v1/chat/completions", data=body, content_type="application/json")
    assert response.status_code == 200


def nested(depth: int) -> str:
    """JSON text nested `depth` levels deep (written out: too deep for json.dumps itself)."""
    opening = "".join("[" if i % 2 else '{"k":' for i in range(depth))
    closing = "".join("]" if i % 2 else "}" for i in reversed(range(depth)))
    return opening + '"x"' + closing


# Every JSON surface, with the deep value where the surface would otherwise carry it along (an
# extra field, a tool schema, a Responses tool): a 400 in the surface's own shape, never an
# upstream call whose encoding fails (a RecursionError, once a deployment's cooldown for all).
DEEP_REQUESTS = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "extra": "DEEP"}),
    ("/v1/completions", {"prompt": "hi", "extra": "DEEP"}),
    ("/v1/embeddings", {"input": "hi", "extra": "DEEP"}),
    (
        "/v1/messages",
        {
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "metadata": {"x": "DEEP"},
        },
    ),
    (
        "/v1/responses",
        {
            "input": "hi",
            "store": False,
            "tools": [{"type": "function", "name": "f", "parameters": "DEEP"}],
        },
    ),
    (
        "/v1/messages/count_tokens",
        {"messages": [{"role": "user", "content": "hi"}], "extra": "DEEP"},
    ),
]


@pytest.mark.parametrize(("path", "body"), DEEP_REQUESTS, ids=[p for p, _ in DEEP_REQUESTS])
@pytest.mark.parametrize("depth", [300, 975])
def test_a_deeply_nested_body_is_refused_on_every_surface(make_app, upstream, path, body, depth):
    from tests.conftest import openai_model

    app = make_app(
        {
            "auth": {"tokens": [{"name": "a", "token": TOKEN}]},
            "models": [openai_model(upstream, name="gpt")],
        }
    )
    raw = json.dumps({"model": "gpt", **body}).replace('"DEEP"', nested(depth))
    client = app.test_client()
    response = client.post(path, data=raw, content_type="application/json", headers=AUTH)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert "nested" in error["message"]
    assert upstream.requests == []
    if path in ("/v1/chat/completions", "/v1/messages", "/v1/responses"):
        # Nothing was held against the deployment: a plain request still reaches it.
        plain = json.loads(raw.replace(nested(depth), '"shallow"'))
        assert client.post(path, json=plain, headers=AUTH).status_code == 200
        assert len(upstream.requests) == 1


def test_gemini_refuses_a_deep_body_in_its_own_shape(make_app, upstream):
    from tests.conftest import openai_model

    app = make_app(
        {
            "auth": {"tokens": [{"name": "a", "token": TOKEN}]},
            "models": [openai_model(upstream, name="gpt")],
        }
    )
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "extra": "DEEP"}
    response = app.test_client().post(
        "/v1beta/models/gpt:generateContent",
        data=json.dumps(body).replace('"DEEP"', nested(975)),
        content_type="application/json",
        headers=AUTH,
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["status"] == "INVALID_ARGUMENT"


def test_a_shallow_body_with_many_brackets_is_accepted(make_app, upstream):
    from tests.conftest import openai_model

    app = make_app(
        {
            "auth": {"tokens": [{"name": "a", "token": TOKEN}]},
            "models": [openai_model(upstream, name="gpt")],
        }
    )
    wide = {"items": [[{"a": [1]}] for _ in range(400)]}
    body = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "extra": wide}
    response = app.test_client().post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200


# --- bodies that are not JSON text: what the client is told -----------------------------------

SURFACE_PATHS = ["/v1/chat/completions", "/v1/messages", "/v1beta/models/echo:generateContent"]
CHAT_JSON = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})


def error_message(response) -> str:
    return response.json["error"]["message"]


@pytest.mark.parametrize("path", SURFACE_PATHS)
@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "GZIP", "gzip, identity"])
def test_a_compressed_body_is_415_and_never_decoded(client, path, coding):
    import gzip

    response = client.post(
        path,
        data=gzip.compress(CHAT_JSON.encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
    )
    assert response.status_code == 415
    assert "compressed" in error_message(response)
    assert coding not in error_message(response)


def test_identity_coding_is_no_coding(client):
    response = client.post(
        "/v1/chat/completions",
        data=CHAT_JSON,
        headers={"Content-Type": "application/json", "Content-Encoding": "identity"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize("path", SURFACE_PATHS)
@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"\x1f\x8b\x08\x00compressed", "not UTF-8 text (byte 0x8b at offset 1)"),
        (b'{"model": "echo", "x": "\xff"}', "not UTF-8 text (byte 0xff at offset 24)"),
        (b'{"model": "echo", "max_tokens": ' + b"9" * 5000 + b"}", "a number too long"),
        (b'{"model": "echo", "x": -' + b"1" * 4301 + b"}", "a number too long"),
        (b'{"model": ', "not valid JSON: Expecting value at line 1, column 11"),
        (b'{"model": "echo",\n "x": }', "not valid JSON: Expecting value at line 2, column 7"),
    ],
)
def test_bodies_that_are_not_json_text_are_told_in_plain_words(client, path, body, said):
    response = client.post(path, data=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    message = error_message(response)
    assert said in message
    for internal in ("sys.", "codec", "set_int_max_str_digits", "Traceback", "char "):
        assert internal not in message
