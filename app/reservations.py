"""A request's hold on its quota windows, from admission until it is settled or given back.

`reserve` takes, in one storage round trip, the request windows (one request), token windows
(the prompt's estimate plus the output cap) and budget windows (that priced at the deployment's
costs) of the client token and of the first candidate deployment that has room (and is not
cooling down). Routing asks `Reservation.route` before trying a deployment: the reserved one
costs nothing more; a fallback to another moves the deployment's part there. When the answer
is known, `settle` replaces the reservation by the real usage in one more round trip; a failed
request `give_back`s its tokens and budget; a request answered without an upstream call (a
cache hit) `release`s everything but its client request count.

With Redis the round trip is split: `send_reservation` sends it and gives a `Pending`, whose
answer routing reads just before the first deployment's first upstream byte (app.routing,
`ready`), so that request is prepared while Redis works. Memory answers at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from limits.errors import StorageError

from .config import ModelConfig, TokenConfig
from .cooldown import BreakerState
from .hooks.limits_batch import Change, RedisBatch
from .ratelimit import (
    Counts,
    Demand,
    Limit,
    Plan,
    Quotas,
    WindowState,
    breaker_key_plan,
    micro_usd,
    rate_limit_headers,
)


@dataclass(frozen=True)
class Held:
    """An amount a request holds in one window, and which counter it went to."""

    limit: Limit
    amount: int
    mark: object


class Reservation:
    """What one request holds; exactly one of settle / give_back / release takes effect."""

    def __init__(
        self,
        quotas: Quotas | None,
        token: TokenConfig | None,
        demand: Demand,
        held: list[Held] | None = None,
        deployment: ModelConfig | None = None,
        deployment_held: list[Held] | None = None,
        headers: dict[str, str] | None = None,
        states: list[BreakerState] | None = None,
        per_deployment: bool = False,
        full: dict[str, float] | None = None,
        note: str = "",
    ) -> None:
        self.quotas = quotas
        self.token = token
        self.demand = demand
        self.held = held or []
        self.deployment = deployment
        self.deployment_held = deployment_held or []
        self.headers = headers or {}
        # Cooldown states read in the same round trip (Redis), for routing to use.
        self.states = states
        # Whether any candidate has windows of its own (or the token a budget) to hold.
        self.per_deployment = per_deployment
        self.entered: set[str] = set()  # deployments routing has tried
        # Deployments admission found without room, and when they have some again; the first
        # refusing window, named in the 503 when no deployment could take the request.
        self.full = full or {}
        self.note = note
        self._done = False
        self._lock = threading.Lock()

    @classmethod
    def free(cls, demand: Demand | None = None) -> Reservation:
        """A reservation that holds nothing (no limits apply, or the storage is down)."""
        return cls(None, None, demand or Demand(charged=False))

    @property
    def holds_nothing(self) -> bool:
        return self.quotas is None

    # -- routing ------------------------------------------------------------------------------

    def route(self, model: ModelConfig) -> float | None:
        """Before `model` is tried: None if its windows are held, else when it has room."""
        if self.quotas is None or self.token is None or not self.per_deployment:
            return None
        if self.deployment is not None and model.key == self.deployment.key:
            self.entered.add(model.key)
            return None
        if model.key in self.full:
            return self.full[model.key]
        quotas = self.quotas
        pairs = quotas.deployment_plan(self.token, model, self.demand)
        # The deployment left behind gives its part back in the same round trip, before the
        # new one is judged: the token's budget held for the old one must not refuse the new.
        previous = self._deployment_changes(keep_requests=self._entered_current())
        try:
            done = quotas.send_reserve(Plan(required=pairs), first=previous)()
        except StorageError as err:
            quotas.storage_failed(err)
            return None
        # Given back either way (a refusal takes nothing, but the old part is gone too).
        quotas.hold([(h.limit, h.amount) for h in self.deployment_held], -1)
        self.deployment, self.deployment_held = None, []
        if done.refused is not None:
            limit, amount = pairs[done.refused]
            if amount > limit.item.amount:
                return math.inf  # never room for it there
            return time.time() + max(1.0, done.readings[done.refused].reset_in)
        self.deployment = model
        self.deployment_held = [
            Held(limit, amount, mark)
            for (limit, amount), mark in zip(pairs, done.marks, strict=True)
        ]
        quotas.hold(pairs)
        self.entered.add(model.key)
        return None

    def _entered_current(self) -> bool:
        return self.deployment is not None and self.deployment.key in self.entered

    def _deployment_changes(self, keep_requests: bool) -> list[Change]:
        return [
            Change(h.limit.window, -h.amount, h.mark)
            for h in self.deployment_held
            if h.amount and not (keep_requests and h.limit.counts is Counts.REQUESTS)
        ]

    # -- the end ------------------------------------------------------------------------------

    def _finish(self) -> bool:
        with self._lock:
            if self._done or self.quotas is None:
                self._done = True
                return False
            self._done = True
        held = self.held + self.deployment_held
        self.quotas.hold([(h.limit, h.amount) for h in held], -1)
        return True

    def settle(self, prompt_tokens: int, completion_tokens: int, model: ModelConfig | None = None):
        """Replace the reservation by the real usage (one round trip; never raises)."""
        if not self._finish():
            return
        model = model or self.deployment
        tokens = prompt_tokens + completion_tokens
        cost = micro_usd(model, prompt_tokens, completion_tokens) if model is not None else 0
        changes = []
        for held in self.held + self.deployment_held:
            if held.limit.counts is Counts.REQUESTS:
                continue
            used = cost if held.limit.counts is Counts.BUDGET else tokens
            if used != held.amount:
                changes.append(Change(held.limit.window, used - held.amount, held.mark))
        self.quotas.settle_changes(changes)

    def hung_up(self) -> None:
        """The client left while its answer was awaited: charged its prompt (the deployment
        was sent it) and no output."""
        self.settle(self.demand.prompt_tokens, 0)

    def give_back(self) -> None:
        """A failed request: its tokens and budget go back; the requests it made still count
        (a deployment it never reached gets its request back too)."""
        if not self._finish():
            return
        changes = [
            Change(h.limit.window, -h.amount, h.mark)
            for h in self.held
            if h.amount and h.limit.counts is not Counts.REQUESTS
        ]
        changes += self._deployment_changes(keep_requests=self._entered_current())
        self.quotas.settle_changes(changes)

    def cancel(self) -> None:
        """No deployment could take the request (none was tried): everything goes back, as if
        the request had been refused at admission."""
        if not self._finish():
            return
        changes = [Change(h.limit.window, -h.amount, h.mark) for h in self.held if h.amount]
        changes += self._deployment_changes(keep_requests=False)
        self.quotas.settle_changes(changes)

    def release(self) -> None:
        """Answered without an upstream call (a cache hit): everything goes back but the client
        token's request count."""
        if not self._finish():
            return
        changes = [
            Change(h.limit.window, -h.amount, h.mark)
            for h in self.held
            if h.amount and h.limit.counts is not Counts.REQUESTS
        ]
        changes += self._deployment_changes(keep_requests=False)
        self.quotas.settle_changes(changes)


class Pending:
    """A reservation on its way to the storage: `result()` reads the answer (once) and gives
    the Reservation, or raises the refusal (each time it is asked).

    Sending first and reading later lets the request's thread prepare its upstream call
    while Redis works (routing reads the answer just before the first byte goes upstream):
    a thread that finds its answer already there does not block on the storage at all.
    """

    def __init__(self, answer: Callable[[], Reservation]) -> None:
        self._answer = answer
        self._done = False
        self._result: Reservation | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    @classmethod
    def ready(cls, reservation: Reservation) -> Pending:
        pending = cls(lambda: reservation)
        pending.result()
        return pending

    @property
    def answered(self) -> bool:
        """Whether the answer has been read (a storage without a round trip answers at once)."""
        return self._done

    def result(self) -> Reservation:
        if not self._done:
            with self._lock:
                if not self._done:
                    try:
                        self._result = self._answer()
                    except BaseException as err:
                        self._error = err
                    self._done = True
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def taken(self) -> Reservation | None:
        """The reservation, or None if the request was refused (it holds nothing then)."""
        try:
            return self.result()
        except Exception:  # noqa: BLE001 - the refusal (or the storage's failure) took nothing.
            return None


def reserve(
    quotas: Quotas,
    token: TokenConfig,
    models: Sequence[ModelConfig],
    demand: Demand,
    state_keys: Callable[[str], tuple[str, str]] | None = None,
) -> Reservation:
    """Check and hold every window the request touches, in one round trip; raise the refusal.

    `state_keys` (Redis cooldowns) names the cooldown keys read in the same round trip, so that
    routing needs no read of its own and a cooling deployment is not reserved.
    """
    return send_reservation(quotas, token, models, demand, state_keys).result()


def send_reservation(
    quotas: Quotas,
    token: TokenConfig,
    models: Sequence[ModelConfig],
    demand: Demand,
    state_keys: Callable[[str], tuple[str, str]] | None = None,
) -> Pending:
    """`reserve`, its round trip sent now and its answer read when `result()` is asked for."""
    required = quotas.token_plan(token, demand)
    choices = [quotas.deployment_plan(token, model, demand) for model in models]
    per_deployment = any(choices)
    remote = isinstance(quotas.batch, RedisBatch)
    breakers = breaker_key_plan([m.key for m in models], state_keys) if remote else []
    if not required and not per_deployment:
        return Pending.ready(Reservation(quotas, token, demand))
    plan = Plan(required=required, choices=choices if per_deployment else [])
    choice_breakers = [2 * i + 1 for i in range(len(models))] if breakers else []
    try:
        # Every answer this process has finished is counted before this request is judged.
        answer = quotas.send_reserve(
            plan, breakers, choice_breakers if per_deployment else [], carry=True
        )
    except StorageError as err:
        quotas.storage_failed(err)  # raises under on_storage_error: deny
        return Pending.ready(Reservation.free(demand))
    if not remote:
        # Memory has no round trip to overlap: judged now, and a refusal raised now.
        return Pending.ready(_admitted(quotas, token, models, demand, plan, False, answer))
    return Pending(lambda: _admitted(quotas, token, models, demand, plan, bool(breakers), answer))


def _admitted(
    quotas: Quotas,
    token: TokenConfig,
    models: Sequence[ModelConfig],
    demand: Demand,
    plan: Plan,
    breakers: bool,
    answer: Callable,
) -> Reservation:
    """The Reservation the storage's answer makes, or the refusal it names (raised)."""
    try:
        done = answer()
    except StorageError as err:
        quotas.storage_failed(err)  # raises under on_storage_error: deny
        return Reservation.free(demand)
    required, choices, per_deployment = plan.required, plan.choices, bool(plan.choices)
    flat = plan.flat()
    if done.refused is not None:
        raise _refusal(quotas, flat, done.readings, done.refused, len(required))
    full: dict[str, float] = {}
    note = ""
    if per_deployment and done.chosen is None:
        refusing = [v for v in done.verdicts if v is not None and v >= 0]
        if not done.deployments_full:
            # A client window refused for every candidate (a budget too small for each).
            own = [i for i in refusing if flat[i][0].window.client]
            raise _refusal(quotas, flat, done.readings, own[0], len(required))
        # A deployment's own window (or cooldown) stands in the way, for some candidate at
        # least (others may not fit the token's budget): routing answers 503 as for any
        # deployment without room, naming a deployment's window here, which frees sooner.
        for c, verdict in enumerate(done.verdicts):
            if verdict is not None and verdict >= 0:
                reset = max(1.0, done.readings[verdict].reset_in)
                limit, amount = flat[verdict]
                # A window the request is larger than never has room for it: no time to name.
                never = amount > limit.item.amount
                full[models[c].key] = math.inf if never else time.time() + reset
                if not limit.window.client and not note:
                    note = limit.describe()
                    if amount > limit.item.amount:
                        note += (
                            f" (this request reserves {amount}, more than its whole limit of "
                            f"{limit.item.amount}: it can never be admitted there)"
                        )
    held = [
        Held(limit, amount, mark)
        for (limit, amount), mark in zip(required, done.marks[: len(required)], strict=True)
    ]
    deployment, deployment_held = None, []
    if done.chosen is not None:
        start = len(required) + sum(len(choice) for choice in choices[: done.chosen])
        pairs = choices[done.chosen]
        marks = done.marks[start : start + len(pairs)]
        deployment = models[done.chosen]
        deployment_held = [
            Held(limit, amount, mark) for (limit, amount), mark in zip(pairs, marks, strict=True)
        ]
    quotas.hold([(h.limit, h.amount) for h in held + deployment_held])
    shown = [
        WindowState(
            limit,
            max(0, limit.item.amount - reading.used - amount),
            time.time() + (reading.reset_in or limit.expiry),
        )
        for (limit, amount), reading in zip(required, done.readings, strict=False)
    ]
    return Reservation(
        quotas,
        token,
        demand,
        held,
        deployment,
        deployment_held,
        rate_limit_headers(shown),
        _states(done.cooldowns, len(models)) if breakers else None,
        per_deployment,
        full,
        note,
    )


def _refusal(quotas: Quotas, flat, readings, index: int, required: int) -> Exception:
    limit, amount = flat[index]
    reading = readings[index]
    # The client's request and token windows as they stand (this request took nothing).
    shown = [
        WindowState(
            window_limit,
            max(0, window_limit.item.amount - window_reading.used),
            time.time() + (window_reading.reset_in or window_limit.expiry),
        )
        for (window_limit, _), window_reading in zip(flat[:required], readings, strict=False)
    ]
    return quotas.refusal(limit, amount, reading.used, reading.reset_in, shown)


def _states(values: list[str | None], count: int) -> list[BreakerState] | None:
    """Cooldown states from their keys' values, as RedisBreakers.states reads them."""
    if len(values) != 2 * count:
        return None
    now = time.time()
    states = []
    for i in range(count):
        until = float(values[2 * i]) if values[2 * i] else None
        failures = int(values[2 * i + 1]) if values[2 * i + 1] else 0
        states.append(BreakerState(until if until and until > now else None, failures))
    return states
