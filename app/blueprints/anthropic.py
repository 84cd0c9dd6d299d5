"""The Anthropic Messages surface: `/v1/messages` (streamed or not) and token counting, routed
to any provider: passed through to Anthropic deployments, translated for every other one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from flask import request

from ..blueprints.common import api_blueprint, header_safe
from ..blueprints.pipeline import Answer, Call, Endpoint, Opened, Tally, output_cap, primed, serve
from ..cache import MessageForm
from ..errors import UpstreamError
from ..kinds import Surface
from ..messages import EventWriter, estimate_input_tokens, to_chat_request, to_message
from ..providers import CallContext, Provider
from ..routing import Candidate, Resolution
from ..schemas import COUNT_TOKENS, MESSAGES
from ..streaming import encode_event
from ..think import strip_answer, strip_stream

bp = api_blueprint("ai_proxy_anthropic", __name__)


@dataclass(frozen=True)
class Translated:
    """A Messages request as chat, for deployments that do not speak Messages."""

    canonical: dict
    warnings: str | None  # what a translated call drops, for `x-ai-proxy-warning`
    input_estimate: int


def with_beta(ctx: CallContext) -> CallContext:
    """The client's `anthropic-beta` for an Anthropic upstream: a beta changes what a request
    may hold, so counting its tokens wants it as much as answering it."""
    beta = request.headers.get("anthropic-beta", "")[:1000] or None
    return replace(ctx, anthropic_beta=beta)


class Messages(Endpoint):
    name = "create_message"
    paths = ("/v1/messages",)
    surface = Surface.ANTHROPIC
    schema = MESSAGES
    cache_form = MessageForm()

    def read(self, body: dict, size: int) -> Call:
        warnings: list[str] = []
        canonical = to_chat_request(body, warnings)
        dropped = header_safe("; ".join(dict.fromkeys(warnings))) if warnings else None
        prepared = Translated(canonical, dropped, estimate_input_tokens(body))
        return Call(
            body,
            body["model"],
            size,
            stream=bool(body.get("stream")),
            prompt=canonical,
            prepared=prepared,
            max_output=output_cap(body, "max_tokens", copies=()),
        )

    def context(self, ctx: CallContext) -> CallContext:
        return with_beta(ctx)

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        provider, translated = candidate.provider, call.prepared
        if provider.native_messages:
            message = provider.messages(candidate.ask(call.body), ctx)
            return Answer(message, message.get("usage"), _message_text(message))
        result = provider.chat(candidate.ask(translated.canonical), ctx)
        if provider.model.strip_think:
            result = strip_answer(result)
        message = to_message(result, call.body["model"], translated.input_estimate)
        return Answer(
            message, result.get("usage") or message.get("usage"), headers=_warned(translated)
        )

    def open(self, call: Call, candidate: Candidate, ctx: CallContext) -> Opened:
        provider, translated = candidate.provider, call.prepared
        if provider.native_messages:
            stream = provider.open_messages_stream(candidate.ask(call.body), ctx)
            return Opened(primed(candidate, stream), native_events)
        request = candidate.ask(translated.canonical)
        stream = primed(candidate, provider.open_chat_stream(request, ctx))
        strip = provider.model.strip_think

        def write(items, tally: Tally) -> Iterator[bytes]:
            chunks = strip_stream(items) if strip else items
            prompt_tokens = stream.prompt_tokens or translated.input_estimate
            return canonical_events(chunks, call.body["model"], prompt_tokens, tally)

        return Opened(stream, write, _warned(translated))


class CountTokens(Endpoint):
    """The provider's own count where it has one (an upstream call, so under the client's and
    the deployment's quotas like any other), else an estimate."""

    name = "count_message_tokens"
    paths = ("/v1/messages/count_tokens",)
    surface = Surface.ANTHROPIC
    schema = COUNT_TOKENS
    charged = False

    def context(self, ctx: CallContext) -> CallContext:
        return with_beta(ctx)

    def candidates(self, resolution: Resolution) -> Resolution:
        counting = tuple(c for c in resolution.candidates if counts_upstream(c.provider))
        return replace(resolution, candidates=counting)

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        counted = candidate.provider.count_tokens(candidate.ask(call.body), ctx)
        if not isinstance(counted, int):
            return self.unavailable(call)
        return Answer({"input_tokens": counted})

    def unavailable(self, call: Call) -> Answer:
        # A count is an estimate at worst: no reason to fail the request.
        return Answer({"input_tokens": estimate_input_tokens(call.body)})


serve(bp, Messages(), CountTokens())


def _warned(translated: Translated) -> dict[str, str]:
    return {"x-ai-proxy-warning": translated.warnings} if translated.warnings else {}


def _message_text(message: dict) -> str:
    return "".join(
        b.get("text", "")
        for b in message.get("content") or []
        if isinstance(b, dict) and b.get("type") == "text"
    )


def native_events(items, tally: Tally) -> Iterator[bytes]:
    """Anthropic's own events, relayed as they come; usage noted for charging."""
    usage: dict = {}
    for kind, data in items:
        if kind == "message_start":
            started = (data.get("message") or {}).get("usage") or {}
            # Its output_tokens is a placeholder (1): the count comes with message_delta, and a
            # stream cut before it is charged what it delivered, counted.
            usage.update({k: v for k, v in started.items() if k != "output_tokens"})
        elif kind == "message_delta":
            usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        elif kind == "content_block_delta":
            text = (data.get("delta") or {}).get("text")
            if isinstance(text, str):
                tally.texts.append(text)
        tally.usage = usage
        yield encode_event(kind, data)


def canonical_events(chunks, model: str, input_estimate: int, tally: Tally) -> Iterator[bytes]:
    """Anthropic events for canonical chunks: message_start first, message_stop last."""
    writer = EventWriter(model, input_estimate)
    # The text as it is sent, also when the stream is cut or its client leaves midway.
    tally.texts = writer.text
    yield writer.start()
    for chunk in chunks:
        if chunk.get("usage"):
            tally.usage = chunk["usage"]
        yield from writer.feed(chunk)
    if writer.finish is None:
        # An upstream that stopped without saying why was cut off: never a clean end.
        raise UpstreamError("The upstream stream ended before its answer was complete.")
    yield from writer.finish_events()


def counts_upstream(provider: Provider) -> bool:
    """Whether a deployment counts tokens with an upstream call (else the proxy estimates)."""
    return type(provider).count_tokens is not Provider.count_tokens
