"""No secret reaches a client or a log line: upstreams that echo the proxy's keys, on every path."""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import string
import time

import pytest
import requests

from app.logs import configure_logging
from app.redact import (
    REDACTED,
    Redactor,
    ScrubFilter,
    credential_forms,
    header_secrets,
    scrub_shapes,
    url_secrets,
)
from tests.servers import wait_until
from tests.stub_upstream import Reply, StubUpstream, chat_chunks

_RANDOM = random.Random(12)
ALNUM = string.ascii_letters + string.digits


def random_text(length: int, alphabet: str = ALNUM) -> str:
    return "".join(_RANDOM.choice(alphabet) for _ in range(length))


# Key formats of real providers, as a deployment's `token`.
KEYS = {
    "openai": "sk-proj-" + random_text(48),
    "openai-legacy": "sk-" + random_text(48),
    "anthropic": "sk-ant-api03-" + random_text(40) + "-" + random_text(20) + "AA",
    "huggingface": "hf_" + random_text(34, string.ascii_letters),
    "together": "tgp_v1_" + random_text(43),
    "together-hex": random_text(64, "0123456789abcdef"),
    "mistral": random_text(32),
    "cohere": random_text(40),
    "groq": "gsk_" + random_text(52),
    "google": "AIza" + random_text(35),
}
CLIENT_TOKEN = "ck-" + random_text(30)
ADMIN_TOKEN = random_text(36)
METRICS_TOKEN = random_text(24)
URL_PASSWORD = random_text(20)

# How upstreams echo a key back: whole, a long part, masked, in a URL, in a header dump.
ECHOES = {
    "whole": lambda key: f"Incorrect API key provided: {key}.",
    "tail": lambda key: f"The key ending in {key[-12:]} is not valid",
    "middle": lambda key: f"bad key {key[5:15]}!",
    "masked": lambda key: f"Incorrect API key provided: {key[:8]}{'*' * 20}{key[-8:]}",
    "dotted": lambda key: f"key {key[:6]}...{key[-9:]} expired",
    "url": lambda key: f"cannot reach https://user:{key}@api.example.com/v1/chat",
    "bearer": lambda key: f"headers: {{'Authorization': 'Bearer {key}'}}",
    "query": lambda key: f"GET /v1beta/models?key={key} refused",
    "json": lambda key: json.dumps({"api_key": key, "detail": "wrong"}),
}
MODEL_IDS = [
    "claude-3-5-sonnet-20241022",
    "claude-sonnet-4-20250514",
    "meta-llama/Llama-3.1-8B-Instruct",
    "gpt-4o-mini-2024-07-18",
    "@cf/meta/llama-3.1-8b-instruct",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
    "accounts/fireworks/models/llama-v3p1-8b-instruct",
    "gemini-2.5-flash-preview-05-20",
    "GigaChat-Pro:1.0.26.20",
    "ft:gpt-4o-mini-2024-07-18:my-org::9ABCdef1",
    "Qwen/Qwen2.5-Coder-32B-Instruct",
]
MESSAGES = [{"role": "user", "content": "hello"}]


def leaks(text: str, secret: str) -> list[str]:
    """Every 8-character part of `secret` found in `text` (case-blind)."""
    lower = text.lower()
    return [secret[i : i + 8] for i in range(len(secret) - 7) if secret[i : i + 8].lower() in lower]


def record_texts(records: list[logging.LogRecord]) -> str:
    """All a log record can put in a line: message, arguments, extras and exception text."""
    formatter = logging.Formatter("%(message)s")
    texts = []
    for record in records:
        texts.append(formatter.format(record))
        texts.append(repr(record.args))
        texts.append(repr(vars(record)))
    return "\n".join(texts)


def response_text(response) -> str:
    headers = "\n".join(f"{name}: {value}" for name, value in response.headers.items())
    return headers + "\n" + response.get_data(as_text=True)


# --- the scrubber on its own ------------------------------------------------------------------


@pytest.fixture
def redactor() -> Redactor:
    return Redactor()


@pytest.mark.parametrize("echo", ECHOES)
@pytest.mark.parametrize("kind", KEYS)
def test_configured_key_is_scrubbed_whole_and_in_parts(redactor, kind, echo):
    key = KEYS[kind]
    redactor.register([key])
    text = ECHOES[echo](key)
    assert leaks(redactor.scrub(text), key) == []


@pytest.mark.parametrize("echo", ["whole", "masked", "url", "bearer", "query", "json"])
@pytest.mark.parametrize("kind", KEYS)
def test_unconfigured_keys_are_scrubbed_by_shape(redactor, kind, echo):
    key = KEYS[kind]
    scrubbed = redactor.scrub(ECHOES[echo](key))
    assert REDACTED in scrubbed or "<url>" in scrubbed
    assert key not in scrubbed
    # What is left of a key by its shape is no more than its provider prefix.
    assert len(leaks(scrubbed, key)) <= 6


@pytest.mark.parametrize(
    "secret",
    [
        "xai-" + random_text(60),
        "r8_" + random_text(37),
        "nvapi-" + random_text(64, ALNUM + "-_"),
        "ghp_" + random_text(36),
        "github_pat_11" + random_text(20) + "_" + random_text(59),
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "key-" + random_text(32, "0123456789abcdef"),
        "AKIA" + random_text(16, string.ascii_uppercase + string.digits),
        random_text(24, string.ascii_letters),
        "csk-" + random_text(48),
        "pplx-" + random_text(48),
    ],
)
def test_more_key_shapes(secret):
    scrubbed = scrub_shapes(f"upstream said: {secret} is wrong")
    assert secret not in scrubbed
    assert leaks(scrubbed, secret[6:]) == []


@pytest.mark.parametrize("model", MODEL_IDS)
def test_model_ids_are_left_alone(redactor, model):
    redactor.register(KEYS.values())
    text = f"The model `{model}` does not exist or you do not have access to it."
    assert redactor.scrub(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "gpt (openai): upstream answered 500",
        "botocore.errorfactory.InvalidParameterValueException: bad input",
        "AnthropicVertexProviderConfiguration is missing",
        "hf_transfer_enabled is off; error code api_key_invalid",
        "upstream_error",
        "Invalid bearer authentication",
        "password: required",
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
        "messages.0.content: Input should be a valid string",
        "Rate limit reached for gpt-4o-mini in organization org on tokens per min (TPM): "
        "Limit 200000, Used 199000, Requested 1500.",
    ],
)
def test_ordinary_messages_are_left_alone(redactor, text):
    # Hand-written keys made of words must not eat the proxy's own words.
    redactor.register(
        [
            "sk-upstream-secret",
            "sk-client-test-token",
            "admin-secret-token",
            "AIzaSyUpstreamSecretKey0123456789",
            "0123456789abcdef0123456789abcdef",
        ]
    )
    assert redactor.scrub(text) == text


def test_a_one_word_secret_is_still_scrubbed(redactor):
    redactor.register(["https://user:upstreamsecret@host/"])
    redactor.register(url_secrets("https://bob:upstreamsecret@host/"))
    assert redactor.scrub("wrong password upstreamsecret") == f"wrong password {REDACTED}"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:hunter2pw@redis.local:6379/0", {"hunter2pw"}),
        (
            "rediss://alice:s3cr%3Ft@host/0",
            {"s3cr%3Ft", "s3cr?t", "alice:s3cr%3Ft", base64.b64encode(b"alice:s3cr?t").decode()},
        ),
        (
            "redis://default:hunter2pw@host/0",
            {"hunter2pw", "default:hunter2pw", base64.b64encode(b"default:hunter2pw").decode()},
        ),
        ("https://api.example.com/v1?key=abc123xyz&v=2", {"abc123xyz"}),
        ("https://api.example.com/v1", set()),
        ("memory://", set()),
    ],
)
def test_url_secrets(url, expected):
    assert set(url_secrets(url)) == expected


def test_header_secrets_drop_the_scheme():
    headers = {
        "Authorization": "Bearer abc123xyz789",
        "X-Api-Key": "k-99887766",
        "X-Custom-Auth": "c-55443322",
        "X-Title": "app",
        "HTTP-Referer": "https://example.com",
    }
    assert header_secrets(headers) == ["abc123xyz789", "k-99887766", "c-55443322"]


def test_gigachat_credentials_in_every_form(redactor):
    plain = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc:" + random_text(36)
    encoded = base64.b64encode(plain.encode()).decode()
    for token in (plain, encoded):
        forms = set(credential_forms(token))
        assert {plain, encoded, plain.split(":", 1)[1]} <= forms
    redactor.register(credential_forms(encoded))
    secret = plain.split(":", 1)[1]
    assert leaks(redactor.scrub(f"client secret {secret} refused"), secret) == []


def test_transient_secrets_are_bounded(redactor):
    tokens = [random_text(40) for _ in range(100)]
    for token in tokens:
        redactor.register_transient(token)
    assert leaks(redactor.scrub(tokens[-1]), tokens[-1]) == []
    # The oldest were dropped; key shapes still catch such strings.
    assert len(redactor._transient) <= 64


def test_scrub_is_linear_on_long_text(redactor):
    # A megabyte of one character: every rule runs once over it, none backtracks.
    redactor.register(KEYS.values())
    for text in ("a" * 1_000_000, "a1" * 500_000, "-" * 1_000_000, "sk-" * 300_000):
        assert redactor.scrub(text)


# --- the log filter ---------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    access = logging.getLogger("ai_proxy.access")
    saved = (list(root.handlers), root.level, list(access.handlers), access.propagate)
    yield
    for logger, handlers in ((root, saved[0]), (access, saved[2])):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for handler in handlers:
            logger.addHandler(handler)
    root.setLevel(saved[1])
    access.propagate = saved[3]


def test_filter_scrubs_message_args_extras_and_exceptions(redactor):
    key = KEYS["mistral"]
    redactor.register([key])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ScrubFilter(redactor))
    handler.setFormatter(logging.Formatter("%(message)s %(detail)s"))
    logger = logging.getLogger("tests.redact.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"upstream echoed {key}")
        except ValueError:
            logger.exception(
                "failed with %s and %r", key, {"k": key[3:20]}, extra={"detail": [key[-10:]]}
            )
        logger.warning(f"plain {key}", extra={"detail": "x"})
        logger.warning("%d items for %s", 3, "ok", extra={"detail": "y"})
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert leaks(output, key) == []
    assert "upstream echoed" in output and "ValueError" in output
    assert "3 items for ok y" in output


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_configured_handlers_scrub(restore_logging, capsys, fmt):
    from app import redact

    key = "hf_" + random_text(34)
    redact.register([key])
    configure_logging("DEBUG", fmt)
    logging.getLogger("some.library").warning("token %s", key[2:30], extra={"k": key})
    request_id = random_text(32, "0123456789abcdef")
    logging.getLogger("ai_proxy.access").info(
        "POST /x", extra={"request_id": request_id, "note": key}
    )
    captured = capsys.readouterr()
    assert leaks(captured.err + captured.out, key) == []
    if fmt == "json":
        # The proxy's own ids are not taken for keys.
        assert json.loads(captured.out)["request_id"] == request_id


def test_gunicorn_access_atoms_keep_their_mapping(redactor):
    """gunicorn formats its access line from a dict that answers "-" for a missing atom."""
    from gunicorn.glogging import SafeAtoms

    key = KEYS["cohere"]
    redactor.register([key])
    atoms = SafeAtoms({"h": "127.0.0.1", "r": f"GET /v1/models?key={key} HTTP/1.1", "s": "200"})
    record = logging.LogRecord(
        "gunicorn.access", 20, "", 0, '%(h)s "%(r)s" %({x-id}o)s', atoms, None
    )
    ScrubFilter(redactor).filter(record)
    line = record.getMessage()
    assert line.startswith('127.0.0.1 "GET /v1/models?key=<redacted>')
    assert line.endswith(" -")
    assert leaks(line, key) == []


def test_objects_in_extras_and_args_are_scrubbed(redactor):
    key = KEYS["together"]
    redactor.register([key])

    class Detail:
        def __str__(self) -> str:
            return f"detail with {key}"

    record = logging.LogRecord("x", 30, "", 0, "failed: %s", (Detail(),), None)
    record.detail = Detail()
    record.count = 3
    ScrubFilter(redactor).filter(record)
    assert leaks(record.getMessage() + str(record.detail), key) == []
    assert record.count == 3


def test_host_app_logging_is_scrubbed_too(make_app, upstream, caplog):
    """A host app that mounts the proxy logs through its own handlers: still scrubbed."""
    key = KEYS["cohere"]
    make_app(deployment_config(upstream, key))
    caplog.set_level(logging.DEBUG)
    logging.getLogger("app.upstream").warning("upstream said %s", ECHOES["tail"](key))
    logging.getLogger("urllib3.connectionpool").debug("GET /x?key=%s", key)
    assert caplog.records
    assert leaks(record_texts(caplog.records), key) == []


# --- through the app: every path upstream text takes ------------------------------------------


def deployment_config(upstream: StubUpstream, key: str, provider: str = "openai") -> dict:
    base = {
        "openai": upstream.url + "/v1",
        "anthropic": upstream.url + "/v1",
        "gemini": upstream.url + "/v1beta",
    }[provider]
    return {
        "auth": {
            "tokens": [{"name": "t", "token": CLIENT_TOKEN}],
            "admin_token": ADMIN_TOKEN,
        },
        "server": {"metrics_token": METRICS_TOKEN},
        "models": [
            {"name": "m", "provider": provider, "base_url": base, "token": key, "model": "up"},
            {
                "name": "creds",
                "provider": "openai",
                "base_url": f"http://user:{URL_PASSWORD}@127.0.0.1:{upstream.port}/v1",
                "token": key,
                "model": "up",
            },
        ],
        "retry": {"max_retries": 0, "base_delay": "10ms"},
        "routing": {"cooldown_seconds": 0},
    }


@pytest.fixture
def make_client(make_app, upstream):
    def make(key: str, provider: str = "openai"):
        client = make_app(deployment_config(upstream, key, provider)).test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {CLIENT_TOKEN}"
        return client

    return make


def error_body(message: str, provider: str, status: int = 400) -> dict:
    if provider == "anthropic":
        return {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    if provider == "gemini":
        return {"error": {"code": status, "message": message, "status": "INVALID_ARGUMENT"}}
    return {"error": {"message": message, "type": "invalid_request_error", "code": message[-40:]}}


def first_chunk(provider: str) -> list[str]:
    """The opening events of a stream, for an error to come after."""
    if provider == "anthropic":
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "up",
                "content": [],
                "stop_reason": None,
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "partial"},
        }
        return [
            f"event: {event['type']}\ndata: {json.dumps(event)}" for event in (start, block, delta)
        ]
    if provider == "gemini":
        chunk = {"candidates": [{"content": {"role": "model", "parts": [{"text": "partial"}]}}]}
        return [f"data: {json.dumps(chunk)}"]
    return chat_chunks(["partial"])[:2]


def in_band_error(message: str, provider: str) -> str:
    if provider == "anthropic":
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
        return f"event: error\ndata: {json.dumps(body)}"
    if provider == "gemini":
        return f"data: {json.dumps({'error': {'code': 500, 'message': message}})}"
    return f"data: {json.dumps({'error': {'message': message, 'code': 'server_error'}})}"


def call(client, surface: str, stream: bool):
    if surface == "anthropic":
        body = {"model": "m", "max_tokens": 16, "messages": MESSAGES, "stream": stream}
        return client.post("/v1/messages", json=body)
    return client.post(
        "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "stream": stream}
    )


def assert_no_leak(response, caplog, *secrets: str) -> None:
    text = response_text(response)
    logs = record_texts(caplog.records)
    for secret in secrets:
        assert leaks(text, secret) == [], text
        assert leaks(logs, secret) == [], logs


FAILURES = {
    "400": lambda message, provider: Reply(status=400, body=error_body(message, provider, 400)),
    "422": lambda message, provider: Reply(status=422, body=error_body(message, provider, 422)),
    "500": lambda message, provider: Reply(status=500, body=error_body(message, provider, 500)),
    "401": lambda message, provider: Reply(status=401, body=error_body(message, provider, 401)),
    "stream error": lambda message, provider: Reply(
        events=[*first_chunk(provider), in_band_error(message, provider)]
    ),
    "stream error first": lambda message, provider: Reply(
        events=[in_band_error(message, provider)]
    ),
}


@pytest.mark.parametrize("surface", ["openai", "anthropic"])
@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("echo", ["whole", "tail", "middle", "url", "bearer"])
def test_echoed_key_never_reaches_client_or_log(
    make_client, upstream, caplog, surface, provider, failure, echo
):
    key = KEYS[{"openai": "huggingface", "anthropic": "together", "gemini": "mistral"}[provider]]
    client = make_client(key, provider)
    caplog.set_level(logging.DEBUG)
    upstream.queue(FAILURES[failure](ECHOES[echo](key), provider))
    response = call(client, surface, stream=failure.startswith("stream"))
    response.get_data()
    assert response.status_code >= 400 or "error" in response.get_data(as_text=True)
    assert_no_leak(response, caplog, key)


@pytest.mark.parametrize("kind", KEYS)
@pytest.mark.parametrize(
    "failure", ["400", "500", "200 error 400", "200 error 502", "stream error", "stream cut"]
)
def test_every_key_format_is_scrubbed(make_client, upstream, caplog, kind, failure):
    key = KEYS[kind]
    client = make_client(key)
    caplog.set_level(logging.DEBUG)
    message = " / ".join(echo(key) for echo in ECHOES.values())
    replies = {
        "400": Reply(status=400, body=error_body(message, "openai")),
        "500": Reply(status=500, body=error_body(message, "openai")),
        # OpenRouter answers some failures with a 200 whose body is the error.
        "200 error 400": Reply(body={"error": {"message": message, "code": 400}}),
        "200 error 502": Reply(
            body={"error": {"message": message, "code": 502, "metadata": {"provider_name": key}}}
        ),
        "stream error": Reply(events=[*first_chunk("openai"), in_band_error(message, "openai")]),
        "stream cut": Reply(events=chat_chunks([key, "more", "words"]), cut_after=2),
    }
    upstream.queue(replies[failure])
    stream = failure.startswith("stream")
    response = call(client, "openai", stream)
    text = response.get_data(as_text=True)
    if failure == "stream cut":
        # The answer's own content is the client's: only the error and the logs are checked.
        text = text.split("\n\n")[-2]
        assert "error" in text
        assert leaks(record_texts(caplog.records), key) == []
        return
    assert response.status_code >= 400 or "error" in text
    assert_no_leak(response, caplog, key)


@pytest.mark.parametrize("failure", ["400", "500", "stream error"])
def test_client_admin_and_url_secrets_echoed_back_are_scrubbed(
    make_client, upstream, caplog, failure
):
    key = KEYS["groq"]
    client = make_client(key)
    caplog.set_level(logging.DEBUG)
    secrets = (CLIENT_TOKEN, ADMIN_TOKEN, METRICS_TOKEN, URL_PASSWORD)
    message = "; ".join(f"value {secret[2:]} and {secret}" for secret in secrets)
    replies = {
        "400": Reply(status=400, body=error_body(message, "openai")),
        "500": Reply(status=500, body=error_body(message, "openai")),
        "stream error": Reply(events=[*first_chunk("openai"), in_band_error(message, "openai")]),
    }
    upstream.queue(replies[failure])
    response = call(client, "openai", stream=failure.startswith("stream"))
    response.get_data()
    assert_no_leak(response, caplog, key, *secrets)


def test_deployment_with_url_credentials(make_app, upstream, caplog):
    key = KEYS["cohere"]
    client = make_app(deployment_config(upstream, key)).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {CLIENT_TOKEN}"
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(f"user:{URL_PASSWORD}".encode()).decode()
    message = f"auth was user:{URL_PASSWORD}, sent {basic}"
    upstream.queue(Reply(status=400, body=error_body(message, "openai")))
    response = client.post("/v1/chat/completions", json={"model": "creds", "messages": MESSAGES})
    assert response.status_code == 400
    assert_no_leak(response, caplog, key, URL_PASSWORD, basic)


def test_ordinary_error_text_still_reaches_the_client(make_client, upstream):
    """Scrubbing keeps what the client needs to fix its request."""
    client = make_client(KEYS["openai"])
    text = "Invalid value for 'temperature': must be <= 2. Model gpt-4o-mini-2024-07-18."
    upstream.queue(Reply(status=400, body={"error": {"message": text, "code": "invalid_value"}}))
    response = call(client, "openai", stream=False)
    assert response.status_code == 400
    assert response.json["error"]["message"] == text
    assert response.json["error"]["code"] == "invalid_value"


def test_proxy_key_refused_inside_a_200_is_a_502(make_client, upstream):
    client = make_client(KEYS["openai"])
    upstream.queue(Reply(body={"error": {"message": "No auth credentials found", "code": 401}}))
    response = call(client, "openai", stream=False)
    assert response.status_code == 502
    assert "credentials (401)" in response.json["error"]["message"]


def sse_event(kind: str | None, payload: dict) -> str:
    head = f"event: {kind}\n" if kind else ""
    return f"{head}data: {json.dumps(payload)}"


def cohere_start() -> list[str]:
    return [
        sse_event("message-start", {"type": "message-start", "id": "m1", "delta": {}}),
        sse_event(
            "content-start",
            {
                "type": "content-start",
                "index": 0,
                "delta": {"message": {"content": {"type": "text", "text": ""}}},
            },
        ),
        sse_event(
            "content-delta",
            {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "a"}}}},
        ),
    ]


def giga_chunk() -> str:
    return sse_event(None, {"choices": [{"index": 0, "delta": {"content": "a"}}]})


# Each adapter's own stream, broken after its first words by an error that echoes the key.
IN_BAND = {
    "cohere error event": (
        "cohere",
        lambda m: [*cohere_start(), sse_event("error", {"message": m})],
    ),
    "cohere failed generation": (
        "cohere",
        lambda m: [
            *cohere_start(),
            sse_event(
                "message-end",
                {"type": "message-end", "delta": {"finish_reason": "ERROR", "error": m}},
            ),
        ],
    ),
    "cloudflare errors envelope": (
        "cloudflare",
        lambda m: [
            sse_event(None, {"response": "a"}),
            sse_event(None, {"errors": [{"code": 3040, "message": m}], "success": False}),
        ],
    ),
    "cloudflare error string": (
        "cloudflare",
        lambda m: [sse_event(None, {"response": "a"}), sse_event(None, {"error": m})],
    ),
    "gigachat error chunk": (
        "gigachat",
        lambda m: [giga_chunk(), sse_event(None, {"status": 500, "message": m})],
    ),
}


def other_provider_model(upstream: StubUpstream, provider: str, key: str) -> dict:
    model = {"name": "m", "provider": provider, "token": key, "model": "up"}
    if provider == "cohere":
        return {**model, "base_url": upstream.url}
    if provider == "cloudflare":
        return {**model, "base_url": upstream.url + "/client/v4/accounts/acc123/ai"}
    return {**model, "base_url": upstream.url + "/api/v1", "auth_url": upstream.url + "/oauth"}


def oauth_answer(access_token: str) -> Reply:
    return Reply(body={"access_token": access_token, "expires_at": int(time.time() + 1800) * 1000})


@pytest.mark.parametrize("surface", ["openai", "anthropic"])
@pytest.mark.parametrize("case", IN_BAND)
def test_in_band_errors_of_every_adapter(make_app, upstream, caplog, case, surface):
    provider, events = IN_BAND[case]
    key = KEYS["cohere"] if provider != "gigachat" else f"{random_text(12)}:{random_text(36)}"
    config = deployment_config(upstream, key)
    config["models"] = [other_provider_model(upstream, provider, key)]
    client = make_app(config).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {CLIENT_TOKEN}"
    caplog.set_level(logging.DEBUG)
    access_token = "eyJ" + random_text(40)
    encoded = base64.b64encode(key.encode()).decode()
    message = " / ".join(
        [*(echo(key) for echo in ECHOES.values()), f"Basic {encoded}", access_token[5:30]]
    )
    if provider == "gigachat":
        upstream.queue(oauth_answer(access_token))
    upstream.queue(Reply(events=events(message)))
    response = call(client, surface, stream=True)
    text = response.get_data(as_text=True)
    assert "error" in text.split("\n\n")[-2]
    secrets = (key, *key.split(":"), encoded) + ((access_token,) if provider == "gigachat" else ())
    for secret in secrets:
        assert leaks(response_text(response), secret) == []
        assert leaks(record_texts(caplog.records), secret) == []


@pytest.mark.parametrize("where", ["oauth", "chat 400", "chat 500"])
def test_gigachat_credentials_and_access_token_echoed_back(make_app, upstream, caplog, where):
    client_id, client_secret = "0f1e2d3c-aaaa-bbbb-cccc-123456789abc", random_text(36)
    key = f"{client_id}:{client_secret}"
    encoded = base64.b64encode(key.encode()).decode()
    config = deployment_config(upstream, encoded)
    config["models"] = [other_provider_model(upstream, "gigachat", encoded)]
    client = make_app(config).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {CLIENT_TOKEN}"
    caplog.set_level(logging.DEBUG)
    access_token = random_text(48)
    message = (
        f"Authorization: Basic {encoded}; secret {client_secret[:20]}; "
        f"token {access_token}, tail {access_token[-10:]}"
    )
    if where == "oauth":
        upstream.queue(Reply(status=400, body={"code": 4, "message": message}))
    else:
        status = 400 if where == "chat 400" else 500
        upstream.queue(oauth_answer(access_token))
        upstream.queue(Reply(status=status, body={"status": status, "message": message}))
    response = call(client, "openai", stream=False)
    assert response.status_code in (400, 502)
    # The access token is known once the OAuth answer brought it.
    fetched = (access_token,) if where != "oauth" else ()
    for secret in (encoded, client_secret, *fetched):
        assert leaks(response_text(response), secret) == []
        assert leaks(record_texts(caplog.records), secret) == []


# --- through gunicorn: the server's own log output ---------------------------------------------


def wait_until_logged(proxy, text: str, timeout: float = 10.0) -> str:
    """The server's log once it holds `text` (lines are written as the answers finish)."""
    wait_until(lambda: text in proxy.logs(), timeout)
    return proxy.logs()


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_gunicorn_logs_and_answers_hold_no_key(proxy_factory, upstream, fmt):
    key = KEYS["huggingface"]
    config = deployment_config(upstream, key)
    proxy = proxy_factory(config, env={"LOG_LEVEL": "DEBUG", "LOG_FORMAT": fmt})
    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    message = " / ".join(echo(key) for echo in ECHOES.values())
    replies = [
        (Reply(status=400, body=error_body(message, "openai")), False),
        (Reply(status=500, body=error_body(message, "openai")), False),
        (Reply(body={"error": {"message": message, "code": 502}}), False),
        (Reply(events=[*first_chunk("openai"), in_band_error(message, "openai")]), True),
        (Reply(events=chat_chunks(["a", "b", "c"]), cut_after=2), True),
    ]
    texts = []
    for reply, stream in replies:
        upstream.queue(reply)
        response = requests.post(
            proxy.url + "/v1/chat/completions",
            json={"model": "m", "messages": MESSAGES, "stream": stream},
            headers=headers,
            timeout=10,
        )
        texts.append(response.text)
        texts.append(repr(dict(response.headers)))
        if not stream:
            assert response.status_code >= 400
    # The admin token and an upstream echo of it in a message are scrubbed alike.
    upstream.queue(Reply(status=400, body=error_body(f"admin {ADMIN_TOKEN}", "openai")))
    response = requests.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES},
        headers=headers,
        timeout=10,
    )
    texts.append(response.text)
    assert leaks("\n".join(texts), key) == []
    assert leaks("\n".join(texts), ADMIN_TOKEN) == []
    # The stream error and the 5xx are logged (scrubbed), and the request lines are there.
    logs = wait_until_logged(proxy, "stream ended early")
    assert "upstream answered 500" in logs or "answered 500" in logs
    assert leaks(logs, key) == []
    assert leaks(logs, ADMIN_TOKEN) == []
    assert leaks(logs, CLIENT_TOKEN) == []
    assert upstream.url not in logs
    # gunicorn's own address is not an upstream's: operators still see where it listens.
    assert f"Listening at: {proxy.url}" in logs


# -- no oracle: an answer never tells a client which of its own words are part of a secret --------

ORACLE_KEY = "sk-proj-Q7fT2mZ9xL4vB8nR1cW6yH3kTq0P"
ORACLE_ADMIN = "adm-" + random_text(32)


@pytest.fixture
def oracle_client(make_app):
    from app.redact import REDACTOR

    REDACTOR.forget_all()
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": CLIENT_TOKEN}], "admin_token": ORACLE_ADMIN},
            "models": [
                {
                    "name": "gpt",
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "token": ORACLE_KEY,
                },
                {"name": "echo", "provider": "echo"},
            ],
        }
    )
    yield app.test_client()
    REDACTOR.forget_all()


def pieces(secret: str, size: int = 8) -> list[str]:
    return [secret[i : i + size] for i in range(0, len(secret) - size + 1, 3)]


def test_a_path_is_echoed_as_sent_whether_or_not_it_is_part_of_a_key(oracle_client):
    """Unauthenticated: the 404 names the path. Were parts of keys taken out of it, a client
    could grow a guess one character at a time and read the key (a few hundred requests)."""
    from app.redact import scrub_shapes

    for secret in (ORACLE_KEY, ORACLE_ADMIN, CLIENT_TOKEN):
        for piece in [*pieces(secret), secret[:-1], secret[1:], secret.lower()[4:20]]:
            message = oracle_client.get(f"/x{piece}").json["error"]["message"]
            # Only what anything of that shape gets (a key-like run), secret or not.
            assert message == f"No route for GET {scrub_shapes('/x' + piece)}.", piece
        assert scrub_shapes(f"/x{secret[3:15]}") == f"/x{secret[3:15]}"
    # A whole secret is still taken out, as is anything shaped like a key.
    assert ORACLE_KEY not in oracle_client.get(f"/{ORACLE_KEY}").get_data(as_text=True)
    assert ORACLE_ADMIN not in oracle_client.get(f"/{ORACLE_ADMIN}").get_data(as_text=True)


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/messages", "/v1beta/models/{model}:generateContent"]
)
def test_a_model_name_is_echoed_as_sent_whether_or_not_it_is_part_of_a_key(oracle_client, path):
    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    for piece in pieces(ORACLE_KEY)[2:]:
        model = f"m-{piece}"
        body = {"model": model, "max_tokens": 5, "messages": MESSAGES}
        if "{model}" in path:
            body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        response = oracle_client.post(path.format(model=model), json=body, headers=headers)
        assert response.status_code in (400, 404)
        assert model in response.get_data(as_text=True), (piece, response.get_data())


# -- what an upstream says back is no oracle either -----------------------------------------------


def refusing_upstream(record) -> object:
    """OpenAI's answer to an unknown field: its name in the message and in `param`."""
    from tests.stub_upstream import Reply

    unknown = next(k for k in record.json() if k.startswith("x"))
    return Reply(
        status=400,
        body={
            "error": {
                "message": f"Unrecognized request argument supplied: {unknown}",
                "type": "invalid_request_error",
                "param": unknown,
                "code": None,
            }
        },
    )


def test_an_upstream_repeating_the_client_s_words_is_no_oracle(make_app, upstream):
    """The client's field names come back from the upstream: whether parts of them were taken out
    would say which are part of the deployment's key."""
    from app.redact import REDACTOR, scrub_shapes
    from tests.conftest import openai_model

    REDACTOR.forget_all()
    try:
        model = openai_model(upstream, name="gpt", token=ORACLE_KEY)
        app = make_app(
            {"auth": {"tokens": [{"name": "t", "token": CLIENT_TOKEN}]}, "models": [model]}
        )
        client = app.test_client()
        upstream.handler = refusing_upstream
        headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
        for piece in pieces(ORACLE_KEY)[2:]:
            field = f"x{piece}"
            body = {"model": "gpt", "messages": MESSAGES, field: 1}
            answer = client.post("/v1/chat/completions", json=body, headers=headers).json
            shown = scrub_shapes(field)
            assert answer["error"]["message"].endswith(f"supplied: {shown}"), (piece, answer)
            assert answer["error"]["param"] == shown
    finally:
        REDACTOR.forget_all()


def test_parts_of_a_key_the_client_did_not_send_still_come_out(make_app, upstream):
    from app.redact import REDACTOR
    from tests.conftest import openai_model
    from tests.stub_upstream import Reply

    REDACTOR.forget_all()
    try:
        model = openai_model(upstream, name="gpt", token=ORACLE_KEY)
        app = make_app(
            {"auth": {"tokens": [{"name": "t", "token": CLIENT_TOKEN}]}, "models": [model]}
        )
        tail = ORACLE_KEY[-12:]
        upstream.queue(Reply(status=400, body={"error": {"message": f"key ending {tail} is bad"}}))
        answer = app.test_client().post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {CLIENT_TOKEN}"},
        )
        assert tail not in answer.get_data(as_text=True)
        assert "<redacted>" in answer.json["error"]["message"]
    finally:
        REDACTOR.forget_all()


def test_a_request_s_body_is_not_kept_once_it_is_answered(oracle_client):
    """The words kept for scrubbing hold the body (up to max_body_bytes): a thread waiting for
    its next request must not keep the last one's."""
    from app.redact import CLIENT_WORDS

    body = {"model": "echo", "messages": [{"role": "user", "content": "x" * 100_000}]}
    headers = {"Authorization": f"Bearer {CLIENT_TOKEN}"}
    assert oracle_client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    assert CLIENT_WORDS.get() is None
