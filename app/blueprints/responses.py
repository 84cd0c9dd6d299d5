"""The OpenAI Responses surface: `POST /v1/responses` (streamed or not) to any provider, and the
stored responses behind `GET`/`DELETE /v1/responses/<id>`.

Deployments with `responses: true` get the request as sent; every other one gets it translated
to chat (app/responses_api.py) and its answer translated back. Either way the proxy keeps the
conversation (app/response_store.py): `previous_response_id` is resolved by the proxy, so a
conversation continues on any deployment, passed through or translated.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from flask import request

from ..blueprints.common import (
    api_blueprint,
    authorise_model,
    header_safe,
    json_response,
    proxy_state,
    request_state,
)
from ..blueprints.pipeline import Answer, Call, Endpoint, Opened, Tally, output_cap, primed, serve
from ..cache import ResponsesForm
from ..errors import InvalidRequestError
from ..kinds import Surface
from ..providers import CallContext
from ..response_items import list_page, read_page
from ..response_store import ResponseStore, Stored
from ..responses_api import (
    Translated,
    call_ids,
    check_items,
    estimate_input,
    input_items,
    passthrough_body,
    to_chat_request,
)
from ..responses_output import new_id, output_text, skeleton, to_response
from ..responses_stream import EventWriter, Relay, canonical_events, failing, response_events
from ..routing import Candidate
from ..schemas import RESPONSES
from ..think import strip_answer, strip_stream

bp = api_blueprint("ai_proxy_responses", __name__)


@dataclass(frozen=True)
class Prepared:
    """A Responses request read once: as chat, as sent on, and how its answer is kept."""

    translated: Translated
    passthrough: dict  # for deployments that serve Responses themselves
    response_id: str  # the id the answer gets, passed through or translated
    prompt_estimate: int
    owner: str  # the client token's digest, which alone may read the stored answer
    # Where the answer is kept (None: the client said `store: false`); held here because a
    # stream is written after the request's context has gone.
    store: ResponseStore | None

    def keep(self, response: dict) -> None:
        """Store a finished answer with its conversation, when the client asked to."""
        if self.store is not None and response.get("status") in ("completed", "incomplete"):
            self.store.save(Stored(self.owner, response, self.translated.conversation))

    def stamp(self, body: dict) -> dict:
        """What the proxy sets on a passed-through Response: its own id (the one its store
        knows, never an upstream's that another answer could repeat), and the conversation it
        continues (which the proxy resolved; the upstream never saw the id)."""
        return {"id": self.response_id, "previous_response_id": body.get("previous_response_id")}

    def headers(self) -> dict[str, str]:
        warnings = "; ".join(self.translated.warnings)
        return {"x-ai-proxy-warning": header_safe(warnings)} if warnings else {}


def store() -> ResponseStore:
    return proxy_state().responses


class CreateResponse(Endpoint):
    name = "create_response"
    paths = ("/v1/responses",)
    surface = Surface.RESPONSES
    schema = RESPONSES
    # A hit is replayed with this surface's own events and made the request's own Response.
    cache_form = ResponsesForm(replay=response_events)

    def read(self, body: dict, size: int) -> Call:
        token = request_state().token
        owner = token.sha256
        # The allow-list first, as on every surface: a token refused the model learns nothing
        # about stored responses either.
        wanted = body.get("model") or proxy_state().config.default_model
        if wanted:
            authorise_model(token, wanted)
        history: list[dict] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            history = store().find(previous, owner, param="previous_response_id").history()
        items = input_items(body)
        check_items(items, "input", call_ids(history))
        if not items and not history:
            raise InvalidRequestError("Invalid request: input: give some input.", param="input")
        stream = bool(body.get("stream"))
        translated = to_chat_request(body, history, stream)
        prepared = Prepared(
            translated=translated,
            passthrough=passthrough_body(body, history),
            response_id=new_id("resp"),
            prompt_estimate=estimate_input(translated.canonical["messages"]),
            owner=owner,
            store=store() if body.get("store") is not False else None,
        )
        return Call(
            body,
            body.get("model"),
            size,
            stream=stream,
            prompt=translated.canonical,
            prepared=prepared,
            max_output=output_cap(body, "max_output_tokens", copies=()),
        )

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        provider, prepared = candidate.provider, call.prepared
        if provider.model.responses:
            response = provider.responses(candidate.ask(prepared.passthrough), ctx)
            response = {**response, **prepared.stamp(call.body)}
            prepared.keep(response)
            return Answer(response, response.get("usage"), output_text(response))
        result = provider.chat(candidate.ask(prepared.translated.check()), ctx)
        if provider.model.strip_think:
            result = strip_answer(result)
        response = to_response(
            result, _named(call.body, candidate), prepared.response_id, prepared.prompt_estimate
        )
        prepared.keep(response)
        return Answer(
            response,
            result.get("usage") or response["usage"],
            output_text(response),
            headers=prepared.headers(),
        )

    def open(self, call: Call, candidate: Candidate, ctx: CallContext) -> Opened:
        provider, prepared = candidate.provider, call.prepared
        if provider.model.responses:
            upstream = provider.open_responses_stream(candidate.ask(prepared.passthrough), ctx)
            return Opened(
                primed(candidate, upstream),
                lambda items, tally: relayed(items, tally, prepared, call.body),
            )
        canonical = candidate.ask(prepared.translated.check())
        stream = primed(candidate, provider.open_chat_stream(canonical, ctx))
        strip = provider.model.strip_think
        body = _named(call.body, candidate)

        def write(items, tally: Tally) -> Iterator[bytes]:
            chunks = strip_stream(items) if strip else items
            return translated_events(chunks, tally, prepared, body)

        return Opened(stream, write, prepared.headers())


serve(bp, CreateResponse())


def _named(body: dict, candidate: Candidate) -> dict:
    """The body with the model its Response names: the one asked for, else who answered."""
    return body if body.get("model") else {**body, "model": candidate.name}


def translated_events(chunks, tally: Tally, prepared: Prepared, body: dict) -> Iterator[bytes]:
    """Responses events for a translated stream; its text and usage noted for charging."""
    writer = EventWriter(skeleton(body, prepared.response_id, body.get("model") or ""))

    def on_usage(usage: object) -> None:
        tally.usage = usage

    events = canonical_events(chunks, writer, prepared.prompt_estimate, on_usage, prepared.keep)
    try:
        yield from failing(events, writer.fail)
    finally:
        tally.texts = [writer.output_text()]


def relayed(items, tally: Tally, prepared: Prepared, body: dict) -> Iterator[bytes]:
    """A passed-through stream relayed; its final Response kept, its usage noted."""
    relay = Relay(prepared.stamp(body))
    try:
        yield from failing(relay.events(items, prepared.keep), relay.fail)
    finally:
        tally.usage = relay.usage
        tally.texts = relay.texts


@bp.get("/v1/responses/<response_id>")
def get_response(response_id: str):
    """A stored response, to the token that made it (any other token: 404)."""
    stored = store().find(response_id, request_state().token.sha256)
    return json_response(stored.response)


@bp.delete("/v1/responses/<response_id>")
def delete_response(response_id: str):
    """Delete a stored response of this token's."""
    store().delete(response_id, request_state().token.sha256)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


@bp.get("/v1/responses/<response_id>/input_items")
def list_input_items(response_id: str):
    """A stored response's input items, a page at a time, to the token that made it."""
    includes = [*request.args.getlist("include"), *request.args.getlist("include[]")]
    page = read_page(request.args, includes)
    stored = store().find(response_id, request_state().token.sha256)
    return json_response(list_page(response_id, stored.conversation, page))
