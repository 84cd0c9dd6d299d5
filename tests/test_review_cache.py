"""Adversarial cache tests from review: requests that must never share an entry."""

from __future__ import annotations

import pytest

from tests.stub_upstream import Reply, chat_completion
from tests.test_cache import cached, post  # noqa: F401 - the fixture

COMPLETION = {
    "id": "cmpl-stub",
    "object": "text_completion",
    "created": 1700000000,
    "model": "up-model",
    "choices": [{"index": 0, "text": "hi", "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
ANSWERS = {
    "/v1/chat/completions": ("chat.completion", chat_completion()),
    "/v1/completions": ("text_completion", COMPLETION),
}
# One body chat and legacy completions both accept as it is (one chat model serves both).
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hello"}], "prompt": "Hello"}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/v1/chat/completions", "/v1/completions"),
        ("/v1/completions", "/v1/chat/completions"),
    ],
)
def test_one_body_on_two_endpoints_of_a_surface_is_two_entries(cached, upstream, first, second):  # noqa: F811
    client = cached()
    for path in (first, second):
        upstream.queue(Reply(body=ANSWERS[path][1]))
        answer = post(client, BODY, path=path)
        assert answer.status_code == 200, answer.json
        assert answer.headers["x-ai-proxy-cache"] == "miss"
        assert answer.json["object"] == ANSWERS[path][0]
    # Each is still its own endpoint's hit.
    for path in (first, second):
        hit = post(client, BODY, path=path)
        assert hit.headers["x-ai-proxy-cache"] == "hit"
        assert hit.json["object"] == ANSWERS[path][0]
    assert len(upstream.requests) == 2
