"""The response cache's step in the pipeline: look a request up, answer a hit, store what came.

`look_up` runs after admission (so a hit still counts against the request-rate limits) and
before routing. It says `hit`, `miss` or `bypass` in `x-ai-proxy-cache`, the access log (`cache`)
and `ai_proxy_cache_requests_total`. A miss holds a ticket: the whole answer or the stream's
assembled answer is stored through it when complete (before its last byte is sent), and the
ticket is released when the response closes whatever happened, so identical requests waiting
for it go on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

from flask import after_this_request

from .. import metrics
from ..blueprints.common import current_request, note, proxy_state
from ..cache import SHARED_SCOPE, CacheForm, Entry, Result, Ticket, make_key
from ..fastresponse import ProxyResponse as Response
from ..streaming import SSE_HEADERS

HEADER = "x-ai-proxy-cache"
# The metric's three series, bound once (a hit should cost as little as possible).
COUNTED = {result: metrics.CACHE_REQUESTS.labels(result.value) for result in Result}


@dataclass(frozen=True)
class Lookup:
    """What the cache did for one request; `result` None when the cache is off."""

    result: Result | None = None
    form: CacheForm | None = None
    entry: Entry | None = None  # a hit
    ticket: Ticket | None = None  # a miss that may store its answer
    # A hit's answer as it will be sent, made before anything is: the stream's events, or the
    # rewritten answer's JSON (None: the stored bytes as they are).
    prepared: list[bytes] | str | None = None
    answer: object = None  # a rewritten hit's answer, for the form's `served`


OFF = Lookup()


def directives() -> set[str]:
    """The request's `Cache-Control` directives, lower-cased, without their arguments."""
    header = current_request().headers.get("Cache-Control")
    if not header:
        return set()
    return {part.split("=", 1)[0].strip().lower() for part in header[:1000].split(",")}


def look_up(endpoint, call, token, resolution) -> Lookup:
    """The cache's answer for this request, or how a fresh one is to be stored."""
    cache = proxy_state().cache
    if cache is None:
        return OFF
    form: CacheForm | None = endpoint.cache_form
    wanted = directives()
    body = form.key_body(call.body) if form is not None else None
    cacheable = any(c.provider.model.cache for c in resolution.candidates)
    if body is None or "no-store" in wanted or not cacheable:
        return _noted(Lookup(Result.BYPASS, form))
    scope = SHARED_SCOPE if cache.shared_scope else token.name
    headers = current_request().headers
    varies = {name: headers[name] for name in form.key_headers if name in headers}
    try:
        key = make_key(
            endpoint.surface,
            resolution.identifier,
            scope,
            body,
            varies,
            endpoint=endpoint.name,
        )
    except (RecursionError, ValueError):
        # A body too deeply nested to write out again is answered, just not cached.
        return _noted(Lookup(Result.BYPASS, form))
    entry, ticket = cache.look_up(key, read="no-cache" not in wanted)
    if entry is not None:
        try:
            answer, prepared = _prepared(entry, form, call)
        except Exception as err:  # noqa: BLE001 - any answer its form cannot serve
            # A stored answer the surface cannot replay must not break every hit on its key
            # until it expires: it is dropped, and this request stores a fresh one.
            return _noted(Lookup(Result.MISS, form, ticket=cache.unusable(key, err)))
        # Counted (and named in the log and header) once the request is admitted: a hit
        # refused by its request-rate limit was not answered from the cache.
        return Lookup(Result.HIT, form, entry=entry, prepared=prepared, answer=answer)
    return _noted(Lookup(Result.MISS, form, ticket=ticket))


def _prepared(entry: Entry, form: CacheForm, call) -> tuple[object, list[bytes] | str | None]:
    """What a hit sends, made whole before its first byte (see Lookup.prepared), and the
    rewritten answer if the form rewrites."""
    if not (call.stream or form.rewrites):
        return None, None
    answer = entry.answer()
    if form.rewrites:
        answer = form.for_request(answer, call)
    if call.stream:
        return answer, list(form.replay(answer, call))
    return answer, json.dumps(answer)


def _noted(lookup: Lookup) -> Lookup:
    note(cache=lookup.result.value)
    COUNTED[lookup.result].inc()

    @after_this_request
    def finish(response: Response) -> Response:
        # On every answer to the request, errors included; the lead ends when it is sent.
        response.headers[HEADER] = lookup.result.value
        if lookup.ticket is not None:
            if response.is_streamed:
                response.call_on_close(lookup.ticket.release)
            else:
                # An error (or an answer already stored): the waiting requests go on now.
                lookup.ticket.release()
        return response

    return lookup


def hit_reply(call, admission, lookup: Lookup) -> Response:
    """A stored answer: whole as stored, or replayed as the surface's stream."""
    _noted(lookup)
    if lookup.form.rewrites:
        lookup.form.served(lookup.answer, call)
    entry = lookup.entry
    note(model=entry.deployment, provider=entry.provider, attempts=0, stream=call.stream)
    headers = {
        **admission.headers,
        **entry.headers,
        "x-ai-proxy-model": entry.deployment,
        "x-ai-proxy-attempts": "0",
        "Age": str(entry.age()),
    }
    prepared = lookup.prepared
    if call.stream:
        return Response(prepared, mimetype="text/event-stream", headers={**SSE_HEADERS, **headers})
    body = entry.body if prepared is None else prepared
    return Response(body, mimetype="application/json", headers=headers)


def store_whole(lookup: Lookup, outcome) -> None:
    """Store a whole answer if it is complete and its deployment allows it."""
    ticket = lookup.ticket
    if ticket is None:
        return
    answer, model = outcome.result, outcome.candidate.provider.model
    if model.cache and answer.content_type is None and lookup.form.storable(answer.payload):
        ticket.save(_entry(answer.payload, outcome, answer.headers))
    else:
        ticket.release()


def stored_stream(lookup: Lookup, events: Iterator[bytes], tally, outcome, headers: dict):
    """The stream's events as they are sent; the answer they make is stored at its proper end,
    before its last event goes out. A cut or failed stream stores nothing."""
    ticket = lookup.ticket
    model = outcome.candidate.provider.model
    assembler = lookup.form.assembler() if ticket is not None and model.cache else None
    if assembler is None:
        return events
    return _assembled(events, assembler, lookup.form, ticket, tally, outcome, headers)


def _assembled(events, assembler, form, ticket: Ticket, tally, outcome, headers) -> Iterator[bytes]:
    try:
        for piece in events:
            if assembler.feed(piece):
                answer = assembler.whole(tally.usage)
                # An upstream stream that stopped without its own end marker was not seen to
                # its proper end (its usage chunk may be missing): relayed, not stored.
                proper = not getattr(outcome.result.stream, "ended_unmarked", False)
                if answer is not None and proper and form.storable(answer):
                    ticket.save(_entry(answer, outcome, headers))
            yield piece
    finally:
        ticket.release()


def _entry(answer: object, outcome, headers: dict[str, str]) -> Entry:
    """The entry of a fresh answer: its JSON, and the deployment that produced it."""
    body = json.dumps(answer).encode("utf-8")
    provider = outcome.candidate.provider.model.provider
    return Entry(body, outcome.candidate.name, provider, time.time(), dict(headers))
