"""The one path every model call takes: read, admit, route, call, answer whole or streamed, charge.

A surface declares an `Endpoint` (its schema, the model kind it serves, how one deployment is
asked for a whole answer or a stream, how those are written on the surface); `dispatch` runs it.
A cache lookup, a quota reservation or a new surface is added here once, not in every view.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

from flask import Blueprint
from marshmallow import Schema

from .. import metrics, watchdog
from ..auth import model_allowed
from ..blueprints import caching
from ..blueprints.common import (
    authorise_model,
    current_request,
    json_response,
    note,
    proxy_state,
    read_json_body,
    request_state,
)
from ..cache import CacheForm
from ..config import TokenConfig
from ..errors import (
    ClientGoneError,
    NoAvailableModelError,
    ProxyError,
    UpstreamError,
    UpstreamTimeoutError,
    sse_error_event,
)
from ..fastresponse import ProxyResponse as Response
from ..kinds import Kind, Surface
from ..providers import CallContext, PrimedStream
from ..redact import scrub
from ..reservations import Pending, Reservation, send_reservation
from ..routing import Candidate, Outcome, Resolution
from ..schemas import validate_body
from ..streaming import SSE_HEADERS
from ..tokens import cost_usd, prompt_estimate, usage_numbers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    """One client request as its surface read it."""

    body: dict  # the validated body, as the client sent it
    model: str | None  # the model it asked for (None: the surface's default)
    size: int  # bytes of body, for category routing
    stream: bool = False
    include_usage: bool = False  # whether a stream ends with the usage chunk
    # What the prompt's tokens are estimated from when an upstream reports no usage.
    prompt: dict = field(default_factory=dict)
    prepared: object = None  # the surface's own translation of the body, made once
    # The most output tokens the request allows (max_tokens and its spellings), for reserving
    # quota; None: rate_limits.default_reserve_tokens for each of the `answers` it asks for.
    max_output: int | None = None
    answers: int = 1


def output_cap(body: dict, *names: str, copies: tuple[str, ...] = ("n",)) -> int | None:
    """The most output tokens a request allows: the largest of its `names` it sets (a backend
    may honour either spelling), times the answers it asks for (`n`, `best_of`); None when it
    sets none."""
    caps = _whole_numbers(body, names)
    if not caps:
        return None
    return max(0, max(caps)) * answers_asked(body, copies)


def answers_asked(body: dict, copies: tuple[str, ...] = ("n",)) -> int:
    """How many answers a request asks for (`n`, `best_of`): at least one."""
    return max([*_whole_numbers(body, copies), 1])


def _whole_numbers(body: dict, names: tuple[str, ...]) -> list[int]:
    """The values of `names` in `body` that are integers (not booleans)."""
    values = [body.get(name) for name in names]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


@dataclass(frozen=True)
class Answer:
    """A whole answer, written for its surface: what is sent, and what is charged for it."""

    payload: object  # a JSON value, or bytes with `content_type`
    usage: object = None
    text: str = ""  # the answer's text, for estimating tokens when `usage` is missing
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass
class Tally:
    """What a stream delivered, for charging it: the last usage seen and the text sent."""

    usage: object = None
    texts: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.texts)


@dataclass(frozen=True)
class Opened:
    """A stream a deployment has started answering, and how its surface writes it."""

    stream: PrimedStream
    # Surface events for the stream's items; it notes usage and text in the tally.
    write: Callable[[Iterable, Tally], Iterator[bytes]]
    headers: dict[str, str] = field(default_factory=dict)
    # How the surface ends its stream in-band when it fails (None: `sse_error_event`), and
    # the stream's media type (Gemini's JSON array is not an event stream).
    error_event: Callable[[ProxyError], bytes] | None = None
    mimetype: str = "text/event-stream"


@dataclass(frozen=True)
class Admission:
    """A request on its way in: whose token, which deployments may answer, and its quota
    reservation, sent but maybe not yet answered (routing reads it before the first upstream
    byte; a refusal is raised there)."""

    token: TokenConfig
    resolution: Resolution
    pending: Pending = field(default_factory=lambda: Pending.ready(Reservation.free()))

    @property
    def reservation(self) -> Reservation:
        """What the request holds in its quota windows: settled by the answer, given back when
        the request fails, released by an answer that needed no upstream call (a cache hit)."""
        return self.pending.result()

    @property
    def headers(self) -> dict[str, str]:
        """The quota headers the answer carries."""
        return self.reservation.headers


class Endpoint:
    """One model-calling endpoint of a surface; subclasses fill in what differs."""

    name: ClassVar[str]  # the view's name, verb + resource
    paths: ClassVar[tuple[str, ...]]  # where it is served (POST)
    surface: ClassVar[Surface] = Surface.OPENAI
    kind: ClassVar[Kind] = Kind.CHAT
    schema: ClassVar[Schema]
    # Whether answers are charged against token and budget quotas (images and counts are not).
    charged: ClassVar[bool] = True
    # How answers are cached (app.cache.forms: the key's body, which answers are complete, how a
    # stream is assembled and a stored answer replayed); None: never cached.
    cache_form: ClassVar[CacheForm | None] = None

    def normalise(self, body: object) -> object:
        """The body as the schema is to see it (a surface's own spellings made standard)."""
        return body

    def read(self, body: dict, size: int) -> Call:
        """The request as a Call; raise a ProxyError for what the schema cannot check."""
        return Call(body, body.get("model"), size)

    def context(self, ctx: CallContext) -> CallContext:
        """The provider's view of the request, for surfaces that pass more through."""
        return ctx

    def candidates(self, resolution: Resolution) -> Resolution:
        """The deployments that may take this call (all of them, unless a surface says)."""
        return resolution

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        """Ask one deployment for a whole answer."""
        raise NotImplementedError

    def open(self, call: Call, candidate: Candidate, ctx: CallContext) -> Opened:
        """Start one deployment's stream; return once its first chunk has come."""
        raise NotImplementedError

    def unavailable(self, call: Call) -> Answer | None:
        """The answer when no deployment could answer (None: the error goes to the client)."""
        return None


def serve(bp: Blueprint, *endpoints: Endpoint) -> None:
    """Route each endpoint's paths to `dispatch`: its view is the pipeline itself."""
    for endpoint in endpoints:
        view = functools.partial(dispatch, endpoint)
        for path in endpoint.paths:
            bp.add_url_rule(path, endpoint.name, view, methods=["POST"])


def dispatch(endpoint: Endpoint) -> Response:
    """Run one request through `endpoint`: the only way a view calls a model."""
    body, size = read_json_body()
    call = endpoint.read(validate_body(endpoint.schema, endpoint.normalise(body)), size)
    token, resolution = resolve(call.model, size, endpoint.kind, endpoint)
    # The cache first: a hit costs no tokens, so only the token's request windows judge it.
    lookup = caching.look_up(endpoint, call, token, resolution)
    if lookup.entry is not None:
        admission = reserve_for(token, resolution, endpoint, call, hit=True)
        settle_hit(admission)
        return caching.hit_reply(call, admission, lookup)
    ctx = endpoint.context(call_context(resolution.identifier))
    # Sent now, read by routing just before the first byte goes upstream: the upstream call is
    # prepared while the storage answers.
    admission = reserve_for(token, resolution, endpoint, call)
    if call.stream:
        outcome = run_reserved(admission, lambda c: endpoint.open(call, c, ctx), ctx.deadline)
        return stream_reply(endpoint, call, admission, outcome, lookup)
    try:
        outcome = run_reserved(admission, lambda c: endpoint.answer(call, c, ctx), ctx.deadline)
    except (UpstreamError, NoAvailableModelError):
        fallback = endpoint.unavailable(call)
        if fallback is None:
            raise
        return reply(fallback, admission.headers)
    outcome.finish()
    caching.store_whole(lookup, outcome)
    return whole_reply(endpoint, call, admission, outcome)


def resolve(
    identifier: str | None, size: int, kind: Kind = Kind.CHAT, endpoint: Endpoint | None = None
) -> tuple[TokenConfig, Resolution]:
    """Check the token may use the model and resolve it to the deployments that may answer."""
    state = proxy_state()
    token = request_state().token
    if identifier is None and kind != Kind.CHAT:
        resolution = state.router.resolve_kind(kind, lambda name: model_allowed(token, name))
    else:
        wanted = identifier or state.config.default_model
        if wanted:
            note(model_requested=wanted)
            authorise_model(token, wanted)
        resolution = state.router.resolve(identifier, size, kind=kind)
    note(model_requested=resolution.identifier)
    if endpoint is not None:
        resolution = endpoint.candidates(resolution)
    return token, resolution


def reserve_for(
    token: TokenConfig,
    resolution: Resolution,
    endpoint: Endpoint | None = None,
    call: Call | None = None,
    hit: bool = False,
) -> Admission:
    """Reserve the request's quota (or raise the refusal): every window it touches, or, for a
    cache hit, only the token's request windows (no deployment answers it, it costs nothing)."""
    state = proxy_state()
    charged = endpoint.charged if endpoint is not None and not hit else False
    prompt = prompt_estimate(call.prompt) if call is not None and charged else 0
    models = [] if hit else [candidate.provider.model for candidate in resolution.candidates]
    demand = state.quotas.demand(
        prompt,
        call.max_output if call else None,
        charged,
        call.answers if call else 1,
        token,
        models,
    )
    breakers = getattr(state.router.cooldowns.backend, "state_keys", None)
    pending = send_reservation(state.quotas, token, models, demand, breakers)
    return Admission(token, resolution, pending)


def run_reserved(admission: Admission, call: Callable[[Candidate], object], deadline: float):
    """router.run with the request's reservation deciding each deployment's quota (its answer
    read before the first upstream byte, its refusal raised there); a request that fails
    gives its reservation back."""
    pending = admission.pending
    answered = pending.answered
    try:
        return proxy_state().router.run(
            admission.resolution,
            call,
            deadline,
            gate=lambda candidate: pending.result().route(candidate.provider.model),
            states=pending.result().states if answered else None,
            ready=None if answered else lambda: pending.result().states,
        )
    except BaseException as err:
        reservation = pending.taken()
        if reservation is None:
            raise  # refused: it holds nothing
        if isinstance(err, NoAvailableModelError):
            if err.extra_headers.get("x-ai-proxy-attempts") != "0":
                reservation.give_back()
                raise
            # No deployment was tried (all out of room or cooling down): it took nothing.
            reservation.cancel()
            if reservation.note:
                err.message = f"{err.message} Quota exceeded: {reservation.note}."
        elif isinstance(err, ClientGoneError):
            reservation.hung_up()
        else:
            reservation.give_back()
        raise


def call_context(requested_model: str | None) -> CallContext:
    """The provider's view of this request, with the deadline for its first byte."""
    routing = proxy_state().config.routing
    now = time.monotonic()
    deadline = now + routing.request_timeout_seconds
    # Every upstream exchange of this request is watched: cut at its deadline, or as soon
    # as the client (gunicorn's connection to it) hangs up.
    watchdog.enter_scope(
        watchdog.Scope(
            deadline=deadline,
            stream_deadline=now + routing.stream_timeout_seconds,
            client=current_request().environ.get("gunicorn.socket"),
        )
    )
    return CallContext(
        request_id=request_state().request_id,
        requested_model=requested_model,
        deadline=deadline,
    )


def whole_reply(endpoint: Endpoint, call: Call, admission: Admission, outcome: Outcome) -> Response:
    """A whole answer sent; charged once it is on its way (quota storage adds no latency)."""
    note_outcome(outcome, endpoint.surface, stream=False)
    answer: Answer = outcome.result
    response = reply(answer, {**routing_headers(outcome), **admission.headers})
    if endpoint.charged:
        settle = settle_usage(admission.token, outcome.candidate, call.prompt, admission)
        usage, text = answer.usage, answer.text
        response.call_on_close(lambda: settle(usage, text))
    else:
        response.call_on_close(lambda: admission.reservation.settle(0, 0))
    return response


def reply(answer: Answer, headers: dict[str, str]) -> Response:
    if answer.content_type is not None:
        return Response(
            answer.payload, content_type=answer.content_type, headers={**headers, **answer.headers}
        )
    return json_response(answer.payload, headers={**headers, **answer.headers})


def stream_reply(
    endpoint: Endpoint,
    call: Call,
    admission: Admission,
    outcome: Outcome[Opened],
    lookup: caching.Lookup = caching.OFF,
) -> Response:
    """An opened stream relayed to the client as its events come."""
    note_outcome(outcome, endpoint.surface, stream=True)
    opened = outcome.result
    limit = proxy_state().config.routing.stream_timeout_seconds
    tally = Tally()
    events = opened.write(bounded(opened.stream, time.monotonic() + limit), tally)
    events = caching.stored_stream(lookup, events, tally, outcome, opened.headers)
    settle = settle_usage(admission.token, outcome.candidate, call.prompt, admission)
    failed = opened.error_event or functools.partial(sse_error_event, surface=endpoint.surface)
    response = Response(
        relay(outcome, opened.stream, events, tally, failed, settle),
        mimetype=opened.mimetype,
        headers={**SSE_HEADERS, **routing_headers(outcome), **admission.headers, **opened.headers},
    )
    # A client gone before the body started: the relay never runs; the prompt is still charged
    # (settling happens once, so after a relay that ran this does nothing).
    response.call_on_close(lambda: settle(tally.usage, tally.text()))
    return response


def bounded(items: Iterable, ends_by: float) -> Iterator:
    """Items until the stream's time is up; then an in-band timeout."""
    for item in items:
        yield item
        if time.monotonic() > ends_by:
            raise UpstreamTimeoutError("The stream ran longer than the proxy allows.")


def relay(
    outcome: Outcome,
    stream: PrimedStream,
    events: Iterator[bytes],
    tally: Tally,
    failed: Callable[[ProxyError], bytes],
    settle: Callable[[object, str], object],
) -> Iterator[bytes]:
    """Send a stream's events as they come; a failure after the first byte ends in-band.

    Whatever happens, the upstream is closed, routing hears how it ended, and the tokens
    delivered (before a failure or a disconnect too) are charged.
    """
    error: ProxyError | None = None
    metrics.STREAMS_IN_FLIGHT.inc()
    try:
        yield from events
    except ProxyError as err:
        error = err
        logger.warning("stream ended early: %s", scrub(err.message))
        yield failed(err)
    except Exception:  # noqa: BLE001 - headers are sent; the client still gets an in-band error.
        error = ProxyError()
        logger.exception("stream failed inside the proxy")
        yield failed(error)
    finally:
        metrics.STREAMS_IN_FLIGHT.dec()
        stream.close()
        outcome.finish(error)
        settle(tally.usage, tally.text())


def primed(candidate: Candidate, stream) -> PrimedStream:
    """A provider's stream with its first answer chunk read (fallback is possible until then)."""
    return PrimedStream(stream, candidate.provider.label)


def note_outcome(outcome: Outcome, surface: Surface, stream: bool) -> None:
    """Record who answered and how soon the first byte came."""
    first_byte = time.perf_counter() - request_state().started
    model = outcome.candidate.provider.model
    note(
        model=model.name,
        provider=model.provider,
        attempts=outcome.attempts,
        stream=stream,
        ttfb_ms=round(first_byte * 1000, 2),
    )
    metrics.FIRST_BYTE_SECONDS.labels(surface, model.name).observe(first_byte)


def routing_headers(outcome: Outcome) -> dict[str, str]:
    return {
        "x-ai-proxy-model": outcome.candidate.name,
        "x-ai-proxy-attempts": str(outcome.attempts),
    }


def settle_hit(admission: Admission) -> None:
    """A cache hit costs no tokens and no budget: it reserved only the token's request windows,
    where it counts like any request; that count stays."""
    admission.reservation.release()


def settle_usage(
    token: TokenConfig, candidate: Candidate, prompt: dict, admission: Admission | None = None
):
    """A callback replacing the request's reservation by its answer's tokens and cost once its
    usage (or text) is known (without a reservation: charging them); it runs once."""
    quotas = proxy_state().quotas
    activity = proxy_state().activity
    model = candidate.provider.model
    record = note()
    done: list[bool] = []

    def settle(usage: object, completion_text: str) -> tuple[int, int]:
        prompt_tokens, completion = usage_numbers(usage, prompt, completion_text)
        if done:
            return prompt_tokens, completion
        done.append(True)
        cost = cost_usd(model, prompt_tokens, completion)
        if admission is not None:
            admission.reservation.settle(prompt_tokens, completion, model)
        else:
            quotas.charge(token, model.key, prompt_tokens + completion, cost)
        record.update(prompt_tokens=prompt_tokens, completion_tokens=completion, cost_usd=cost)
        metrics.TOKENS.labels(model.name, token.name, "prompt").inc(prompt_tokens)
        metrics.TOKENS.labels(model.name, token.name, "completion").inc(completion)
        if cost:
            metrics.COST.labels(model.name, token.name).inc(cost)
        activity.charge(token.name, model.name, prompt_tokens + completion, cost)
        return prompt_tokens, completion

    return settle
