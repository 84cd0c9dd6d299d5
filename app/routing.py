"""Routing: which deployments may answer a request's `model`, in what order, and falling back.

Resolution: a configured name, an alias, a category (case-insensitive, filtered by
`max_request_length`), a wildcard `provider/*`, else 404. Candidates are ordered by priority
first and by the configured strategy among equal priorities; deployments cooling down are
skipped; retryable failures move on to the next candidate until `max_attempts` or the request's
deadline.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from . import metrics, tracing
from .activity import Activity
from .config import Config
from .cooldown import BreakerState, Cooldowns, MemoryBreakers
from .errors import (
    InvalidRequestError,
    ModelNotFoundError,
    NoAvailableModelError,
    ProxyError,
    RequestTooLargeError,
    UpstreamClientError,
    UpstreamError,
    UpstreamTimeoutError,
)
from .providers import Provider
from .ratelimit import Quotas
from .upstream import before_sending

logger = logging.getLogger(__name__)

T = TypeVar("T")
LATENCY_SMOOTHING = 0.3


def deployment_key(provider: Provider) -> str:
    """A deployment's identity, stable across workers and hosts that share a config."""
    return provider.model.key


@dataclass(frozen=True)
class Candidate:
    """One deployment that may answer, with the model id it is to be asked for."""

    provider: Provider
    upstream_model: str

    @property
    def name(self) -> str:
        return self.provider.model.name

    @property
    def key(self) -> str:
        return deployment_key(self.provider)

    def ask(self, body: dict) -> dict:
        """A client's body with the model id this deployment knows."""
        return {**body, "model": self.upstream_model}


@dataclass(frozen=True)
class Resolution:
    """What a request's `model` named (for the allow-list) and who may answer it, in order."""

    identifier: str
    is_category: bool
    candidates: tuple[Candidate, ...]
    # Every candidate may be tried (a request for "every model of a kind", as Go's /image does),
    # not only `routing.max_attempts` of them.
    try_all: bool = False


@dataclass
class Outcome(Generic[T]):
    """A successful call: its result, who answered, and how many deployments were tried.

    `finish()` must be called once the answer is fully delivered (at once for whole answers, at
    the end of a stream); a stream that fails after its first byte passes the error.
    """

    result: T
    candidate: Candidate
    attempts: int
    _done: Callable[[ProxyError | None], None] = field(repr=False, default=lambda err: None)
    _finished: bool = field(default=False, repr=False)

    def finish(self, error: ProxyError | None = None) -> None:
        if not self._finished:
            self._finished = True
            self._done(error)


@dataclass
class _Trial:
    """One request's way through its candidates: where it is and what it met."""

    resolution: Resolution
    state_list: list[BreakerState] | None  # None: known once the quota answer is read
    gate: Callable[[Candidate], float | None] | None = None
    queue: list[Candidate] = field(init=False)
    states: dict[str, BreakerState] = field(init=False)
    position: int = 0
    attempts: int = 0
    last_error: UpstreamError | None = None
    soonest_back: float | None = None  # when a skipped deployment is back, the soonest
    # Deployments this request took the probe of (see Router._unprobe).
    probing: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.queue = list(self.resolution.candidates)
        self.states = {}
        if self.state_list is not None:
            self.know(self.state_list)

    def know(self, states: list[BreakerState]) -> None:
        """The candidates' cooldown states, in the resolution's order."""
        keys = (c.key for c in self.resolution.candidates)
        self.states = dict(zip(keys, states, strict=True))

    def back_at(self, when: float) -> None:
        self.soonest_back = when if self.soonest_back is None else min(self.soonest_back, when)


class _NotAdmitted(BaseException):
    """The first candidate, tried before the quota answer was read, turned out not to be
    tried (cooling down, probed by another request, or out of quota): its call stops before
    any upstream byte, and routing moves on. A BaseException, as GeneratorExit is: a control
    signal that no adapter's or tracer's `except Exception` may take for a failure."""


class _DoorFailed(BaseException):
    """Reading the quota answer failed other than with the proxy's own errors (a refusal, the
    storage unavailable): carried through the provider's code, which must not take it for the
    deployment's failure, then raised again as it was."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class _Door:
    """A quota answer still on its way when routing starts (see Router.run)."""

    ready: Callable[[], list[BreakerState] | None]
    passed: bool = False
    # When the first candidate was let through (its attempt's time starts there, not with the
    # wait for the answer).
    at: float | None = None


class Router:
    """Resolves names, aliases, categories and wildcards; runs a call with fallback."""

    activity: Activity | None = None  # counts attempts for the status page (app.activity)

    def __init__(
        self,
        config: Config,
        providers: list[Provider],
        cooldowns: Cooldowns | None = None,
        quotas: Quotas | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.providers = providers
        self.quotas = quotas
        self.cooldowns = cooldowns or Cooldowns(
            MemoryBreakers(),
            threshold=config.routing.failure_threshold,
            cooldown_seconds=config.routing.cooldown_seconds,
        )
        self.clock = clock
        self.by_name: dict[str, list[Provider]] = {}
        self.wildcards: list[Provider] = []
        self.categories: dict[str, list[Provider]] = {}
        for provider in providers:
            model = provider.model
            if model.is_wildcard:
                self.wildcards.append(provider)
            else:
                self.by_name.setdefault(model.name, []).append(provider)
            for category in model.all_categories:
                self.categories.setdefault(category, []).append(provider)
        self._lock = threading.Lock()
        self._last_used: dict[str, float] = {}
        self._in_flight: dict[str, int] = {}
        self._latency: dict[str, float] = {}

    # -- resolution ---------------------------------------------------------------------------

    def resolve(self, requested: str | None, body_size: int = 0, kind: str = "chat") -> Resolution:
        """Candidates for `requested` (or `default_model`), best first; 404 if nothing matches."""
        identifier = requested or self.config.default_model
        if not identifier:
            raise InvalidRequestError(
                "The request has no 'model' and no default is configured.", param="model"
            )
        if identifier in self.by_name:
            providers = self._of_kind(self.by_name[identifier], kind, identifier)
            return Resolution(identifier, False, self._candidates(providers, identifier))
        if identifier in self.config.aliases:
            candidates: list[Candidate] = []
            for member in self.config.aliases[identifier]:
                members = self.by_name.get(member) or self._wildcard_for(member)
                candidates.extend(self._candidates(self._of_kind(members, kind, member), member))
            if not candidates:
                raise ModelNotFoundError(f"No model of the alias {identifier!r} is loaded.")
            return Resolution(identifier, False, tuple(candidates))
        category = identifier.upper()
        if category in self.categories:
            members = [p for p in self.categories[category] if p.model.kind == kind]
            fitting = [
                p
                for p in members
                if not p.model.max_request_length or p.model.max_request_length >= body_size
            ]
            if members and not fitting:
                raise RequestTooLargeError(
                    f"No model in the category {identifier!r} accepts a request of "
                    f"{body_size} bytes."
                )
            if fitting:
                return Resolution(identifier, True, self._candidates(fitting, identifier))
        wildcard = self._wildcard_for(identifier)
        if wildcard:
            providers = self._of_kind(wildcard, kind, identifier)
            return Resolution(identifier, False, self._candidates(providers, identifier))
        raise ModelNotFoundError(f"The model {identifier!r} does not exist.", param="model")

    def is_category(self, identifier: str) -> bool:
        """Whether `identifier` would resolve as a category (not a name or alias first)."""
        return (
            identifier not in self.by_name
            and identifier not in self.config.aliases
            and identifier.upper() in self.categories
        )

    def resolve_kind(self, kind: str, allowed: Callable[[str], bool]) -> Resolution:
        """Every `kind` model the caller may use, best first (for requests without a model)."""
        providers = [p for p in self.providers if p.model.kind == kind and allowed(p.model.name)]
        if not providers:
            raise ModelNotFoundError(
                f"No {kind} model is configured for this API key.", param="model"
            )
        candidates = sorted(providers, key=self._sort_key())
        return Resolution(
            candidates[0].model.name,
            False,
            tuple(Candidate(p, p.model.upstream_model(p.model.name)) for p in candidates),
            try_all=True,
        )

    def wildcard_owner(self, identifier: str) -> str | None:
        """The provider name of a wildcard deployment that would serve `identifier` as a valid
        upstream id, or None."""
        for provider in self._wildcard_for(identifier):
            try:
                provider.check_upstream_id(provider.model.upstream_model(identifier))
            except InvalidRequestError:
                continue
            return provider.model.provider
        return None

    def _wildcard_for(self, name: str) -> list[Provider]:
        return [p for p in self.wildcards if name.startswith(p.model.name[:-1])]

    @staticmethod
    def _of_kind(providers: list[Provider], kind: str, name: str) -> list[Provider]:
        chosen = [p for p in providers if p.model.kind == kind]
        if providers and not chosen:
            raise InvalidRequestError(
                f"The model {name!r} is a {providers[0].model.kind} model, not a {kind} model.",
                param="model",
            )
        return chosen

    def _candidates(self, providers: list[Provider], requested: str) -> tuple[Candidate, ...]:
        ordered = sorted(providers, key=self._sort_key())
        candidates = []
        for provider in ordered:
            upstream = provider.model.upstream_model(requested)
            if provider.model.is_wildcard:
                # The client chose this id: it must not leave the deployment's path (400 if so).
                provider.check_upstream_id(upstream)
            candidates.append(Candidate(provider, upstream))
        return tuple(candidates)

    def _sort_key(self) -> Callable[[Provider], tuple]:
        """Priority first; among equal priorities, the configured strategy."""
        strategy = self.config.routing.strategy
        with self._lock:
            last_used = dict(self._last_used)
            in_flight = dict(self._in_flight)
            latency = dict(self._latency)
        if strategy == "weighted":
            # Weighted random order without replacement (Efraimidis-Spirakis keys).
            draws: dict[int, float] = {}

            def weighted(p: Provider) -> tuple:
                weight = p.model.weight
                if id(p) not in draws:
                    draws[id(p)] = -(random.random() ** (1 / weight)) if weight > 0 else 1.0
                return (p.model.priority, draws[id(p)])

            return weighted
        if strategy == "least-busy":
            return lambda p: (
                p.model.priority,
                in_flight.get(deployment_key(p), 0),
                last_used.get(deployment_key(p), 0.0),
            )
        if strategy == "latency":
            # Unmeasured deployments sort first so that each one gets measured.
            return lambda p: (
                p.model.priority,
                latency.get(deployment_key(p), 0.0),
                last_used.get(deployment_key(p), 0.0),
            )
        # priority: then least recently used, as the Go proxy did.
        return lambda p: (p.model.priority, last_used.get(deployment_key(p), 0.0))

    # -- running ------------------------------------------------------------------------------

    def run(
        self,
        resolution: Resolution,
        call: Callable[[Candidate], T],
        deadline: float | None = None,
        gate: Callable[[Candidate], float | None] | None = None,
        states: list[BreakerState] | None = None,
        ready: Callable[[], list[BreakerState] | None] | None = None,
    ) -> Outcome[T]:
        """Call candidates in order until one answers; retryable failures move on.

        No new candidate is tried once `deadline` (monotonic seconds) has passed. Raises the last
        failure when every candidate failed, 503 when none could be tried (all cooling down or
        out of quota), 504 when the deadline passed. `gate` (a request's quota reservation)
        says whether a deployment has room, in place of counting a request on it; `states` are
        the candidates' cooldown states when they were read already.

        `ready` reads a quota answer still on its way (raising its refusal) and gives the
        cooldown states it read (None: routing reads them). The first candidate's call starts
        before it, and its upstream request is prepared meanwhile; `ready` is called just
        before that call's first upstream byte (`app.upstream.before_sending`), or when it ends
        without one, and the candidate is then judged as any other before its request goes.
        """
        door = None if ready is None else _Door(ready)
        if door is None and (states is None or len(states) != len(resolution.candidates)):
            states = self.cooldowns.states([c.key for c in resolution.candidates])
        trial = _Trial(resolution, None if door else states, gate)
        while trial.position < len(trial.queue):
            candidate = trial.queue[trial.position]
            trial.position += 1
            if trial.attempts >= self.config.routing.max_attempts and not resolution.try_all:
                break
            if deadline is not None and self.clock() >= deadline:
                trial.last_error = UpstreamTimeoutError(
                    "The request ran out of time before an answer."
                )
                break
            if door is None or door.passed:
                reason = self._skip_reason(candidate, trial)
                if reason is not None:
                    logger.debug("deployment %s skipped: %s", candidate.name, reason)
                    continue
            outcome = self._attempt(candidate, call, trial, door)
            if outcome is not None:
                return outcome
        if door is not None:
            self._pass(door, trial)
        raise self._exhausted(trial)

    def _pass(self, door: _Door, trial: _Trial, candidate: Candidate | None = None) -> None:
        """Read the quota answer, once (its refusal is raised here); then judge `candidate`,
        tried before the answer came, as any candidate is judged before it is tried."""
        if door.passed:
            return
        door.passed = True
        states = door.ready()
        keys = [c.key for c in trial.resolution.candidates]
        if states is None or len(states) != len(keys):
            states = self.cooldowns.states(keys)
        trial.know(states)
        if candidate is not None:
            reason = self._skip_reason(candidate, trial)
            if reason is not None:
                raise _NotAdmitted(reason)
            door.at = self.clock()

    def _admit(self, door: _Door, trial: _Trial, candidate: Candidate) -> None:
        """`_pass` at a call's door: what it raises crosses the provider's code, so any error
        but the proxy's own goes as _DoorFailed (never the deployment's failure, never retried
        on another deployment)."""
        try:
            self._pass(door, trial, candidate)
        except (ProxyError, _NotAdmitted):
            raise
        except Exception as err:
            raise _DoorFailed(err) from err

    def _call(
        self,
        candidate: Candidate,
        call: Callable[[Candidate], T],
        trial: _Trial,
        door: _Door | None,
    ) -> T:
        """The candidate's call; the first one, while the quota answer is on its way, passes
        the door before its first upstream byte (or once it ends, if it sent none)."""
        if door is None or door.passed:
            return call(candidate)
        admit = functools.partial(self._admit, door, trial, candidate)
        with before_sending(admit):
            try:
                result = call(candidate)
            except BaseException:
                admit()  # it sent nothing upstream: a refusal or a skip wins over its failure
                raise
        admit()
        return result

    def _skip_reason(self, candidate: Candidate, trial: _Trial) -> str | None:
        """Why a candidate is not tried now (cooling down, being probed, out of quota)."""
        state = trial.states[candidate.key]
        if state.open_until is not None:
            trial.back_at(state.open_until)
            return "cooling down"
        if self.cooldowns.needs_probe(state):
            if not self.cooldowns.take_probe(candidate.key):
                # Another request is probing this deployment; it stays out until that ends.
                return "being probed by another request"
            trial.probing.add(candidate.key)
        if trial.gate is not None or self.quotas is not None:
            gate = trial.gate or (lambda c: self.quotas.admit_deployment(c.key))
            back = gate(candidate)
            if back is not None:
                self._unprobe(candidate, trial.probing)
                metrics.QUOTA_REFUSALS.labels("deployment", candidate.name).inc()
                trial.back_at(back)
                return "out of quota"
        return None

    def _unprobe(self, candidate: Candidate, probing: set[str]) -> None:
        """The deployment's probe, if this request took it, ended with no verdict: given back."""
        if candidate.key in probing:
            probing.discard(candidate.key)
            self.cooldowns.release_probe(candidate.key)

    def _attempt(
        self,
        candidate: Candidate,
        call: Callable[[Candidate], T],
        trial: _Trial,
        door: _Door | None = None,
    ) -> Outcome[T] | None:
        """One call to one deployment: its outcome, or None to move on to the next."""
        trial.attempts += 1
        last_used = self._begin(candidate)
        started = self.clock()
        try:
            with tracing.attempt_span(
                "chat", candidate.provider.model.provider, candidate.upstream_model, candidate.key
            ) as span:
                try:
                    result = self._call(candidate, call, trial, door)
                except _NotAdmitted as skipped:
                    if span is not None:  # begun before the door: it says it was not tried
                        span.set_attribute("ai_proxy.not_tried", str(skipped))
                    raise
        except _NotAdmitted as skipped:
            # Judged at the door and not to be tried: it never was (nothing went upstream).
            trial.attempts -= 1
            self._untried(candidate, last_used)
            logger.debug("deployment %s skipped: %s", candidate.name, skipped)
            return None
        except _DoorFailed as failed:
            self._untried(candidate, last_used)
            self._unprobe(candidate, trial.probing)
            raise failed.error from None
        except UpstreamError as err:
            self._end(candidate)
            err.extra_headers["x-ai-proxy-attempts"] = str(trial.attempts)
            self._observe(
                candidate,
                "retryable" if err.retryable else "client_error",
                self._since(started, door),
                err,
            )
            if err.retryable:
                self._failed(candidate, err)
                logger.warning("deployment %s failed: %s", candidate.name, err.code)
                metrics.FALLBACKS.labels(candidate.name).inc()
                trial.last_error = err
                return None
            # The client's own mistake: the deployment is fine and nothing cools down.
            self.cooldowns.success(candidate.key, trial.states[candidate.key])
            if isinstance(err, UpstreamClientError) and err.context_length:
                larger = self._larger_context(candidate, trial.queue[trial.position :])
                if larger:
                    trial.queue[trial.position :] = larger
                    trial.last_error = err
                    return None
            raise
        except ProxyError:
            # The client's own doing (it left, or its request cannot be sent): no verdict.
            self._end(candidate)
            self._unprobe(candidate, trial.probing)
            raise
        except Exception:  # noqa: BLE001 - named fail point: an adapter's bug or an
            # answer it did not expect must not be a 500 while other deployments are left.
            # Nor is it the deployment's failure: the request itself may be what the proxy
            # cannot handle, and a verdict here would let one client cool a deployment down
            # for everyone. So the next deployment is tried, and this one keeps its state.
            self._end(candidate)
            self._unprobe(candidate, trial.probing)
            logger.exception("deployment %s: unexpected failure (a proxy bug)", candidate.name)
            failure = UpstreamError(f"{candidate.provider.label}: the answer could not be read")
            self._observe(candidate, "retryable", self._since(started, door), failure)
            trial.last_error = failure
            return None
        except BaseException:
            self._end(candidate)
            self._unprobe(candidate, trial.probing)
            raise
        elapsed = self._since(started, door)
        self._record_latency(candidate, elapsed)
        self._observe(candidate, "success", elapsed)
        state = trial.states[candidate.key]
        return Outcome(
            result,
            candidate,
            trial.attempts,
            _done=lambda error, c=candidate, s=state, p=trial.probing: self._finish(c, s, error, p),
        )

    def _exhausted(self, trial: _Trial) -> ProxyError:
        """The error for a request whose candidates are all spent, skipped or out of time."""
        identifier = trial.resolution.identifier
        if trial.attempts == 0 and trial.last_error is None:
            retry_after: float | None = 1.0
            if trial.soonest_back is not None:
                retry_after = max(1.0, trial.soonest_back - self.cooldowns.clock())
                if math.isinf(retry_after):
                    retry_after = None  # every deployment refused a request it can never admit
            return NoAvailableModelError(
                f"Every deployment of {identifier!r} is cooling down or out of quota.",
                retry_after=retry_after,
                headers={"x-ai-proxy-attempts": "0"},
            )
        last = trial.last_error
        if last is None:
            return ModelNotFoundError(f"No deployment of {identifier!r} is loaded.")
        if isinstance(last, UpstreamClientError):
            return last
        cls = UpstreamTimeoutError if isinstance(last, UpstreamTimeoutError) else UpstreamError
        message = last.message
        if trial.attempts > 1:
            message = f"All {trial.attempts} deployments failed; the last: {message}"
        error = cls(message, headers={"x-ai-proxy-attempts": str(trial.attempts)})
        # What the last upstream answered, for a surface that names a rate limit as one.
        error.upstream_status = getattr(last, "upstream_status", None)
        error.upstream_retry_after = getattr(last, "upstream_retry_after", None)
        return error

    @staticmethod
    def _larger_context(failed: Candidate, rest: list[Candidate]) -> list[Candidate]:
        """The remaining candidates with a larger `context_window` than the one that refused."""
        window = failed.provider.model.context_window
        return [c for c in rest if c.provider.model.context_window > window]

    def _begin(self, candidate: Candidate) -> float | None:
        """Count the candidate in flight and as just used; when it was used before."""
        with self._lock:
            before = self._last_used.get(candidate.key)
            self._last_used[candidate.key] = self.clock()
            self._in_flight[candidate.key] = self._in_flight.get(candidate.key, 0) + 1
        return before

    def _end(self, candidate: Candidate) -> None:
        with self._lock:
            self._in_flight[candidate.key] = max(0, self._in_flight.get(candidate.key, 1) - 1)

    def _untried(self, candidate: Candidate, last_used: float | None) -> None:
        """`_begin` undone for a candidate judged out at the door: not in flight, and last used
        when it was before (None: never), so rotation among equals is as if it was skipped."""
        with self._lock:
            self._in_flight[candidate.key] = max(0, self._in_flight.get(candidate.key, 1) - 1)
            if last_used is None:
                self._last_used.pop(candidate.key, None)
            else:
                self._last_used[candidate.key] = last_used

    def _since(self, started: float, door: _Door | None) -> float:
        """An attempt's time: from its start, or from when it was let through the door (the
        wait for the quota answer is not the deployment's)."""
        if door is not None and door.at is not None:
            started = max(started, door.at)
        return self.clock() - started

    def _record_latency(self, candidate: Candidate, seconds: float) -> None:
        with self._lock:
            previous = self._latency.get(candidate.key)
            self._latency[candidate.key] = (
                seconds if previous is None else previous + LATENCY_SMOOTHING * (seconds - previous)
            )

    def _finish(
        self,
        candidate: Candidate,
        state: BreakerState,
        error: ProxyError | None,
        probing: set[str],
    ) -> None:
        self._end(candidate)
        if error is None:
            self.cooldowns.success(candidate.key, state)
        elif isinstance(error, UpstreamError) and error.retryable:
            self._failed(candidate, error)
        else:
            # Ended by its client or by the proxy, not by the deployment: no verdict.
            self._unprobe(candidate, probing)

    def _failed(self, candidate: Candidate, error: UpstreamError) -> None:
        if self.cooldowns.failure(candidate.key, error.retry_after) is not None:
            metrics.COOLDOWNS.labels(candidate.name, candidate.provider.model.provider).inc()

    def _observe(
        self, candidate: Candidate, outcome: str, seconds: float, error: ProxyError | None = None
    ) -> None:
        model = candidate.provider.model
        metrics.ATTEMPTS.labels(model.name, model.provider, outcome).inc()
        metrics.UPSTREAM_SECONDS.labels(model.name, model.provider, outcome).observe(seconds)
        if self.activity is not None:
            # The status page's shared counts: in memory here, published in the background.
            self.activity.attempt(candidate.key, outcome, seconds, model.name, error)

    def latency_ms(self, key: str) -> float | None:
        """The recent (smoothed) latency of a deployment in this worker, if measured."""
        with self._lock:
            seconds = self._latency.get(key)
        return round(seconds * 1000, 1) if seconds is not None else None

    def in_flight(self) -> dict[str, int]:
        with self._lock:
            return {key: n for key, n in self._in_flight.items() if n}

    def public_models(self) -> list[tuple[str, str, bool]]:
        """(id, owned_by, is_category) for every name, alias and category, in config order."""
        seen: dict[str, tuple[str, str, bool]] = {}
        for provider in self.providers:
            model = provider.model
            seen.setdefault(model.name, (model.name, model.provider, False))
        for alias in self.config.aliases:
            seen.setdefault(alias, (alias, "ai-proxy", False))
        for category in self.categories:
            seen.setdefault(category, (category, "ai-proxy", True))
        return list(seen.values())
