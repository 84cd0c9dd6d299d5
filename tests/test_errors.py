"""Every error is JSON in the surface's shape, Flask's own 404/405/413 included; headers on all."""

from __future__ import annotations

import pytest

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}


def assert_openai_error(response, status, code, type_="invalid_request_error"):
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    error = response.json["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (type_, code)
    return error


def test_unknown_path_is_json_404(client):
    assert_openai_error(client.get("/v2/nothing"), 404, "not_found")
    assert_openai_error(client.get("/"), 404, "not_found")


def test_wrong_method_is_json_405_with_allow(client):
    response = client.get("/v1/chat/completions")
    assert_openai_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


def test_body_over_the_limit_is_413(make_app, config):
    config["server"] = {"max_body_bytes": 2048}
    client = make_app(config).test_client()
    body = {"model": "echo", "messages": [{"role": "user", "content": "x" * 4096}]}
    response = client.post(
        "/v1/chat/completions",
        json=body,
        headers={"Authorization": "Bearer sk-client-test-token"},
    )
    assert_openai_error(response, 413, "request_too_large")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b"[1, 2"])
def test_bad_json_is_400(client, raw):
    response = client.post(
        "/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"}
    )
    assert_openai_error(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([1, 2], None),
        ({"model": "echo"}, "messages"),
        ({"model": "echo", "messages": []}, "messages"),
        ({"model": "echo", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": "echo", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": "echo", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({**CHAT, "stream": "yes please"}, "stream"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "temperature": 9}, "temperature"),
        ({**CHAT, "model": 42}, "model"),
    ],
)
def test_validation_names_the_field(client, body, param):
    error = assert_openai_error(client.post("/v1/chat/completions", json=body), 400, None)
    assert error["param"] == param


def test_unknown_model_is_404_model_not_found(client):
    body = {**CHAT, "model": "no-such-model"}
    error = assert_openai_error(
        client.post("/v1/chat/completions", json=body), 404, "model_not_found"
    )
    assert error["param"] == "model"


def test_request_id_kept_or_made(client):
    kept = client.get("/healthz", headers={"X-Request-ID": "abc-123_x.y:z"})
    assert kept.headers["x-request-id"] == "abc-123_x.y:z"
    for bad in ("has space", "x" * 129, "<script>"):
        made = client.get("/healthz", headers={"X-Request-ID": bad})
        assert made.headers["x-request-id"] not in (bad, "")
    errored = client.get("/nowhere")
    assert len(errored.headers["x-request-id"]) >= 16


def test_security_headers_everywhere(client):
    for response in (
        client.get("/healthz"),
        client.get("/nowhere"),
        client.post("/v1/chat/completions", json=CHAT),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"


def test_stream_headers(client):
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["x-ai-proxy-model"] == "echo"


def test_unexpected_error_is_json_500_without_traceback(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = client.get("/boom")
    assert_openai_error(response, 500, "internal_error", type_="api_error")
    assert "secret internals" not in response.get_data(as_text=True)
    assert "Traceback" not in response.get_data(as_text=True)


def test_a_translator_bug_is_logged_with_its_traceback(caplog):
    import logging

    from app.errors import UpstreamError, client_shape, upstream_shape

    @upstream_shape
    def translate(answer):
        return answer["choices"][0]

    @client_shape
    def read(body):
        return body["messages"]

    with caplog.at_level(logging.DEBUG, logger="app.errors"):
        with pytest.raises(UpstreamError):
            translate({})
        with pytest.raises(Exception) as caught:
            read([])
    assert caught.value.status == 400
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "translate" in errors[0].getMessage()
    # The traceback points at the line that failed, not only at the failure's kind.
    # (the scrub filter may have turned exc_info into exc_text already).
    record = errors[0]
    trace = record.exc_text or logging.Formatter().formatException(record.exc_info)
    assert "KeyError" in trace and 'answer["choices"][0]' in trace
