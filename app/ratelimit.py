"""Quotas through `limits`, per deployment and per client token (its internals: app.hooks).

A request reserves what it may use in every window it touches, atomically and in one storage
round trip (`Quotas.reserve`): one request in request windows, the prompt's estimated tokens
plus its output cap in token windows, that priced at the deployment's costs in budget windows.
It is admitted only if every reservation fits, so N concurrent requests against a window with
room for K admit at most K, across threads, workers and hosts sharing one Redis. When the answer
is known the reservation is replaced by the real usage in one more round trip
(app.reservations). Windows are counted with counters whose cost does not grow with traffic:
`fixed-window` with limits' one counter per window, `sliding-window-counter` with limits'
sliding-window counter (the last window's count weighted by how much of it the moving window
still covers), `moving-window` with 60 sub-window counters (no span of one window ever holds
more than the limit; see app.hooks.limits_batch.Layout.MOVING).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerMonth,
)
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisClusterStorage, Storage, storage_from_string
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from . import metrics
from .config import Config, ModelConfig, TokenConfig
from .cooldown import LogThrottle
from .errors import (
    BudgetExceededError,
    NoAvailableModelError,
    RateLimitError,
    StorageUnavailableError,
)
from .hooks.limits import SweptMemoryStorage
from .hooks.limits_batch import AnswerLost, Change, Layout, RedisBatch, Reserved, Window
from .hooks.limits_memory import LimiterBatch, MemoryBatch
from .hooks.limits_shared import SharedBatch, SharedMemoryStorage, shared_file, shared_storage
from .settling import Settler

logger = logging.getLogger(__name__)

# How each configured strategy's request windows are laid out. limits' own moving window keeps
# an entry per request (up to the limit); sub-window counters bound it at a fixed cost.
LAYOUTS: dict[str, Layout] = {
    "fixed-window": Layout.FIXED,
    "moving-window": Layout.MOVING,
    "sliding-window-counter": Layout.SLIDING,
}
# limits' own limiter for each strategy name (tests pin limits' behaviour through it; the
# proxy counts moving windows in buckets, not in limits' list of entries).
STRATEGIES: dict[str, type[RateLimiter]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
# A dead or slow Redis must never stall a request: short socket timeouts, no client retries.
REDIS_TIMEOUT_SECONDS = 0.25
MICRO_USD = 1_000_000  # budgets are counted in millionths of a dollar
# The strategy named in token and budget windows' keys: they were all sliding-window counters
# once, and counters in a shared Redis outlive an upgrade (a moving window adopts them).
USAGE_SCOPE = "sliding-window-counter"


class Counts(StrEnum):
    """What a limit counts."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    BUDGET = "budget"  # in MICRO_USD


class Owner(StrEnum):
    """Whose a limit is: a deployment's or a client token's."""

    DEPLOYMENT = "model"
    TOKEN = "token"

    def key(self, name: str) -> str:
        """The owner's key, in storage keys and in `Quotas.report`: `model:<deployment key>`,
        `token:<token name>`."""
        return f"{self.value}:{name}"


@dataclass(frozen=True)
class Limit:
    """One configured limit: what it counts, its window, and whose it is."""

    counts: Counts
    item: RateLimitItem
    owner: str  # Owner.key(...)
    name: str  # config field, e.g. requests_per_minute

    scope: str = ""  # the counting strategy: keys of different strategies never collide
    layout: Layout = Layout.SLIDING

    @property
    def identifiers(self) -> tuple[str, str, str]:
        """What names the limit's counters in storage (with the window, added by `limits`)."""
        return (self.counts.value, self.scope, self.owner)

    @functools.cached_property
    def window(self) -> Window:
        key = self.item.key_for(*self.identifiers)
        client = self.owner.startswith(Owner.TOKEN.value + ":")
        return Window(key, self.layout, self.item.amount, self.expiry, client)

    @property
    def expiry(self) -> int:
        return self.item.get_expiry()

    def describe(self) -> str:
        """How a refusal names the window: `tokens_per_minute for token team-a`."""
        kind, _, name = self.owner.partition(":")
        return f"{self.name} for {kind} {name}"


@dataclass(frozen=True)
class WindowState:
    limit: Limit
    remaining: int
    reset_at: float  # epoch seconds


@dataclass(frozen=True)
class Demand:
    """What one request may use: the prompt's estimated tokens and its output cap."""

    prompt_tokens: int = 0
    output_tokens: int = 0
    charged: bool = True  # False: only request windows apply (images, token counts)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens if self.charged else 0

    def micro_usd(self, model: ModelConfig) -> int:
        return micro_usd(model, self.prompt_tokens, self.output_tokens) if self.charged else 0


def micro_usd(model: ModelConfig, prompt: int, completion: int) -> int:
    """An amount of tokens priced at a model's costs, in millionths of a dollar (rounded up)."""
    cost = prompt * model.input_cost_per_mtok + completion * model.output_cost_per_mtok
    return math.ceil(cost)  # per million tokens, in micro-USD: the same number


def make_storage(uri: str, windows: int = 0) -> Storage:
    """The `limits` storage for a URI; Redis ones get short timeouts and no hidden retries.
    memory:// is counted once for all the workers of a gunicorn server (SharedMemoryStorage,
    its table sized for `windows` windows), else in this process."""
    if uri.startswith("memory"):
        path = shared_file()
        if path is not None:
            return shared_storage(path, windows)
        return SweptMemoryStorage(uri, wrap_exceptions=True)
    options: dict = {}
    if uri.startswith(("redis", "rediss")):
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = {
            "socket_timeout": REDIS_TIMEOUT_SECONDS,
            "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
            "retry": Retry(NoBackoff(), 0),
        }
    return storage_from_string(uri, wrap_exceptions=True, **options)


def redis_client(storage: Storage):
    """The Redis client behind a Redis storage (for shared cooldowns), else None."""
    getter = getattr(storage, "get_connection", None)
    return getter() if getter is not None else None


def make_batch(storage: Storage) -> MemoryBatch | RedisBatch | LimiterBatch:
    """The batched check for a storage: memory under one lock (a server's workers' shared
    memory under one lock across them), Redis as one Lua script; a Redis cluster (a request's
    keys live on several nodes) and memcached window by window."""
    if isinstance(storage, SharedMemoryStorage):
        return SharedBatch(storage)
    if isinstance(storage, MemoryStorage):
        return MemoryBatch(storage)
    if redis_client(storage) is not None and not isinstance(storage, RedisClusterStorage):
        return RedisBatch(storage)
    return LimiterBatch(storage)


def _items(
    owner: str,
    source,
    fields: Iterable[tuple[Counts, str, type[RateLimitItem]]],
    scope: str,
    layout: Layout,
    scale: float = 1,
) -> list[Limit]:
    limits = []
    for counts, name, item_cls in fields:
        amount = getattr(source, name, 0) or 0
        if amount > 0:
            item = item_cls(max(1, math.floor(amount * scale)))
            limits.append(Limit(counts, item, owner, name, scope, layout))
    return limits


def window_count(config: Config) -> int:
    """How many windows a config's limits count in (each token's and each deployment's)."""
    names = [name for _, name, _ in (*_REQUEST_FIELDS, *_TOKEN_FIELDS, *_BUDGET_FIELDS)]
    return sum(
        1
        for source in (*config.models, *config.tokens)
        for name in names
        if (getattr(source, name, 0) or 0) > 0
    )


_REQUEST_FIELDS = (
    (Counts.REQUESTS, "requests_per_minute", RateLimitItemPerMinute),
    (Counts.REQUESTS, "requests_per_hour", RateLimitItemPerHour),
    (Counts.REQUESTS, "requests_per_day", RateLimitItemPerDay),
)
_TOKEN_FIELDS = (
    (Counts.TOKENS, "tokens_per_minute", RateLimitItemPerMinute),
    (Counts.TOKENS, "tokens_per_day", RateLimitItemPerDay),
)
_BUDGET_FIELDS = (
    (Counts.BUDGET, "budget_per_day", RateLimitItemPerDay),
    (Counts.BUDGET, "budget_per_month", RateLimitItemPerMonth),
)


def format_reset(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: `17ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


@dataclass
class Plan:
    """One reservation batch as asked: the windows and amounts, required and per candidate."""

    required: list[tuple[Limit, int]] = field(default_factory=list)
    choices: list[list[tuple[Limit, int]]] = field(default_factory=list)

    def flat(self) -> list[tuple[Limit, int]]:
        return [*self.required, *(pair for choice in self.choices for pair in choice)]


class Quotas:
    """Reservation, settling and reading of every configured limit."""

    def __init__(self, config: Config, storage: Storage | None = None) -> None:
        settings = config.rate_limits
        self.storage = storage or make_storage(settings.storage, window_count(config))
        self.batch = make_batch(self.storage)
        strategy, layout = settings.strategy, LAYOUTS[settings.strategy]
        # Token and budget windows are moving windows under `moving-window` (adopting, in
        # Redis, the sliding counters earlier builds kept for them), else sliding counters as
        # they always were: a fixed window would forget them on upgrade and let a budget be
        # spent twice across a window's edge.
        usage = Layout.MOVING if layout is Layout.MOVING else Layout.SLIDING
        self.default_reserve_tokens = settings.default_reserve_tokens
        self.deny_on_error = settings.on_storage_error == "deny"
        self.storage_errors = 0
        self.settle_failures = 0
        self._throttle = LogThrottle()
        self.models: dict[str, list[Limit]] = {}
        self.model_tokens: dict[str, list[Limit]] = {}
        for model in config.models:
            key = Owner.DEPLOYMENT.key(model.key)
            self.models[key] = _items(key, model, _REQUEST_FIELDS, strategy, layout)
            self.model_tokens[key] = _items(key, model, _TOKEN_FIELDS, USAGE_SCOPE, usage)
        self.tokens: dict[str, list[Limit]] = {}
        self.token_usage: dict[str, list[Limit]] = {}
        for token in config.tokens:
            key = Owner.TOKEN.key(token.name)
            self.tokens[key] = _items(key, token, _REQUEST_FIELDS, strategy, layout)
            self.token_usage[key] = _items(key, token, _TOKEN_FIELDS, USAGE_SCOPE, usage) + _items(
                key, token, _BUDGET_FIELDS, USAGE_SCOPE, usage, scale=MICRO_USD
            )
        # Each token's and deployment's smallest token window, which a default reserve must fit.
        self.smallest_tokens: dict[str, int] = {}
        for key, limits in [*self.token_usage.items(), *self.model_tokens.items()]:
            amounts = [limit.item.amount for limit in limits if limit.counts is Counts.TOKENS]
            if amounts:
                self.smallest_tokens[key] = min(amounts)
        # What requests in flight in this worker hold, per window key (for /admin/status).
        self.held: dict[str, int] = {}
        self._held_lock = threading.Lock()
        self.settler = Settler(
            self.adjust, self._settle_failed, lambda err: not isinstance(err, AnswerLost)
        )

    @property
    def shared(self) -> bool:
        """Every worker reads the same counters: Redis (and the other network storages), or
        memory:// counted together by a server's workers."""
        return not isinstance(self.storage, MemoryStorage)

    def healthy(self) -> bool:
        try:
            return bool(self.storage.check())
        except Exception:  # noqa: BLE001 - a health probe only reports.
            return False

    # -- planning -----------------------------------------------------------------------------

    def demand(
        self,
        prompt_tokens: int,
        max_output: int | None,
        charged: bool = True,
        answers: int = 1,
        token: TokenConfig | None = None,
        models: Sequence[ModelConfig] = (),
    ) -> Demand:
        """A request's demand: its output cap, else `rate_limits.default_reserve_tokens` for
        each answer it asks for, but no more than the room the token's smallest token window
        leaves after the prompt, nor than the roomiest candidate deployment's (a default is a
        guess: it must not make every request that sets no cap one never admitted)."""
        if max_output is None:
            output = self.default_reserve_tokens * max(1, answers)
            rooms = []
            if token is not None:
                rooms.append(self.smallest_tokens.get(Owner.TOKEN.key(token.name)))
            if models:
                windows = [self.smallest_tokens.get(Owner.DEPLOYMENT.key(m.key)) for m in models]
                rooms.append(None if None in windows else max(windows))
            for room in rooms:
                if room is not None:
                    output = max(1, min(output, room - max(0, prompt_tokens)))
        else:
            output = max(0, max_output)
        return Demand(max(0, prompt_tokens), output, charged)

    def token_plan(self, token: TokenConfig, demand: Demand) -> list[tuple[Limit, int]]:
        """The token's request and token windows: they apply whichever deployment answers."""
        key = Owner.TOKEN.key(token.name)
        plan = [(limit, 1) for limit in self.tokens.get(key, [])]
        if demand.charged:
            usage = self.token_usage.get(key, [])
            plan += [(limit, demand.tokens) for limit in usage if limit.counts is Counts.TOKENS]
        return plan

    def deployment_plan(
        self, token: TokenConfig, model: ModelConfig, demand: Demand
    ) -> list[tuple[Limit, int]]:
        """The windows that apply if `model` answers: its own, and the token's budgets (priced
        at its costs)."""
        key = Owner.DEPLOYMENT.key(model.key)
        plan = [(limit, 1) for limit in self.models.get(key, [])]
        if demand.charged:
            plan += [(limit, demand.tokens) for limit in self.model_tokens.get(key, [])]
            budget = demand.micro_usd(model)
            for limit in self.token_usage.get(Owner.TOKEN.key(token.name), []):
                if limit.counts is Counts.BUDGET:
                    plan.append((limit, budget))
        return plan

    # -- the two round trips ------------------------------------------------------------------

    def send_reserve(
        self,
        plan: Plan,
        breaker_keys: Sequence[str] = (),
        choice_breakers: Sequence[int] = (),
        carry: bool = False,
        first: Sequence[Change] = (),
    ) -> Callable[[], Reserved]:
        """One batch: reserve the required windows and the first candidate's that fits. With
        `carry`, the settles this process has queued go in the same round trip, first; so do
        the changes in `first` (what the request gives back before it is judged again).

        Sent now: the call returned reads the answer (Redis: it must be called, once). A
        storage with no round trip to overlap runs the batch here."""
        as_windows = [(limit.window, amount) for limit, amount in plan.required]
        choices = [[(limit.window, amount) for limit, amount in c] for c in plan.choices]
        carried, upto = [], 0
        batch = self.batch
        if not isinstance(batch, RedisBatch):
            done = batch.reserve(as_windows, choices, choice_breakers, breaker_keys, list(first))
            return lambda: done
        if carry:
            taken = self.settler.take()
            if taken is None:
                self.settler.wait()  # a batch is on its way: judged after it lands
            else:
                carried, upto = taken
        try:
            answer = batch.send_reserve(
                as_windows, choices, choice_breakers, breaker_keys, [*carried, *first]
            )
        except BaseException:
            self.settler.carried(carried, upto, ok=False)
            raise

        def read() -> Reserved:
            try:
                done = answer()
            except AnswerLost as err:
                # Redis may have applied them: never sent again (they could count twice). Like
                # any settle that fails for good, logged and counted; what they would have
                # given back lapses with its window.
                self.settler.carried(carried, upto, ok=True)
                if carried:
                    self._settle_failed(err, final=True)
                raise
            except BaseException:
                # Not applied: back to the queue (the next round trip or the settling thread).
                self.settler.carried(carried, upto, ok=False)
                raise
            self.settler.carried(carried, upto, ok=True)
            return done

        return read

    def hold(self, pairs: Iterable[tuple[Limit, int]], sign: int = 1) -> None:
        """Note what this worker's requests hold (a report figure, not a quota)."""
        with self._held_lock:
            for limit, amount in pairs:
                key = limit.window.key
                self.held[key] = max(0, self.held.get(key, 0) + sign * amount)

    def refusal(
        self,
        limit: Limit,
        demand: int,
        used: int,
        reset_in: float,
        shown: Sequence[WindowState] = (),
    ) -> Exception:
        """The error for a request a window refused, naming the window; its x-ratelimit-*
        headers show the client's windows (`shown`), the refusing one first."""
        scope = "client" if limit.owner.startswith(Owner.TOKEN.value) else "deployment"
        metrics.QUOTA_REFUSALS.labels(scope, limit.name).inc()
        wait = max(1.0, reset_in)
        amount, shown_demand, shown_used = limit.item.amount, demand, used
        if limit.counts is Counts.BUDGET:
            amount, shown_demand, shown_used = (
                f"${amount / MICRO_USD:g}",
                f"${demand / MICRO_USD:g}",
                f"${used / MICRO_USD:g}",
            )
        message = (
            f"Quota exceeded: {limit.describe()} (limit {amount}, {shown_used} in use, "
            f"this request reserves {shown_demand})."
        )
        never = demand > limit.item.amount
        if never:
            # Waiting cannot help: no Retry-After that would have clients retry it forever.
            message = (
                f"Quota exceeded: {limit.describe()}: this request reserves {shown_demand}, more "
                f"than the whole limit of {amount}; it can never be admitted. Lower max_tokens "
                "(or its spelling for this API)."
            )
            wait = None
        if scope == "deployment":
            return NoAvailableModelError(message, retry_after=wait)
        state = WindowState(
            limit, max(0, limit.item.amount - used), time.time() + max(1.0, reset_in)
        )
        cls = BudgetExceededError if limit.counts is Counts.BUDGET else RateLimitError
        headers = rate_limit_headers(list(shown))
        if limit.counts is not Counts.BUDGET:
            headers.update(rate_limit_headers([state]))
        return cls(message, retry_after=wait, headers=headers)

    def adjust(self, changes: list) -> None:
        """The settling batch (app.hooks.limits_batch.Change items): one round trip."""
        self.batch.adjust(changes)

    # -- deployments without a reservation (a Router run without one) -------------------------

    def admit_deployment(self, deployment: str) -> float | None:
        """Count a request on a deployment: None if admitted, else when it has room again."""
        limits = self.models.get(Owner.DEPLOYMENT.key(deployment), [])
        if not limits:
            return None
        try:
            done = self.send_reserve(Plan(required=[(limit, 1) for limit in limits]))()
        except StorageError as err:
            self.storage_failed(err)
            return None
        if done.refused is None:
            return None
        return time.time() + max(1.0, done.readings[done.refused].reset_in)

    # -- reading ------------------------------------------------------------------------------

    def report(self, owner: str) -> dict[str, dict]:
        """Each of an owner's limits (`Owner.key(...)`): used, reserved and left, for
        /admin/status. `reserved` is what requests in flight in this worker hold; `used` is
        the rest of what the window counts."""
        limits = (
            self.models.get(owner, [])
            + self.model_tokens.get(owner, [])
            + self.tokens.get(owner, [])
            + self.token_usage.get(owner, [])
        )
        self.settled()
        try:
            readings = self.batch.read([limit.window for limit in limits])
        except StorageError:
            return {
                limit.name: {"limit": _shown(limit, limit.item.amount), "remaining": None}
                for limit in limits
            }
        report = {}
        for limit, reading in zip(limits, readings, strict=True):
            held = min(self.held.get(limit.window.key, 0), reading.used)
            remaining = max(0, limit.item.amount - reading.used)
            report[limit.name] = {
                "limit": _shown(limit, limit.item.amount),
                "used": _shown(limit, reading.used - held),
                "reserved": _shown(limit, held),
                "remaining": _shown(limit, remaining),
                "resets_in_seconds": round(max(0.0, reading.reset_in), 1),
            }
        return report

    # -- charging without a reservation -------------------------------------------------------

    def charge(
        self, token: TokenConfig, deployment: str, total_tokens: int, cost_usd: float
    ) -> None:
        """Charge usage that was never reserved (one round trip); never raises."""
        deployment_usage = self.model_tokens.get(Owner.DEPLOYMENT.key(deployment), [])
        changes = [Change(limit.window, total_tokens, 0) for limit in deployment_usage]
        for limit in self.token_usage.get(Owner.TOKEN.key(token.name), []):
            budget = limit.counts is Counts.BUDGET
            amount = math.ceil(cost_usd * MICRO_USD) if budget else total_tokens
            changes.append(Change(limit.window, amount, 0))
        changes = [change for change in changes if change.delta > 0]
        self.settle_changes(changes)

    def settle_changes(self, changes: list) -> None:
        """Settle a batch, retried once, then logged and counted; never raises. A network
        storage's is queued for the settler thread (off the request thread, shared under load);
        memory's costs less than the hand-over and is applied at once."""
        if not changes:
            return
        if isinstance(self.batch, RedisBatch):
            self.settler.put(changes)
            return
        for attempt in (1, 2):
            try:
                self.adjust(changes)
                return
            except Exception as err:  # noqa: BLE001 - settling never fails a request.
                self._settle_failed(err, final=attempt == 2)

    def settled(self) -> None:
        """Wait until this process's queued settles have reached the storage."""
        self.settler.wait()

    def _settle_failed(self, err: Exception, final: bool) -> None:
        self.storage_errors += 1
        metrics.STORAGE_ERRORS.labels("rate_limit").inc()
        if final:
            self.settle_failures += 1
            metrics.QUOTA_SETTLE_FAILURES.inc()
            self.storage_failed(err, raise_on_deny=False, what="settle", counted=True)

    def storage_failed(
        self,
        err: Exception,
        raise_on_deny: bool = True,
        what: str = "check",
        counted: bool = False,
    ) -> None:
        if not counted:
            self.storage_errors += 1
            metrics.STORAGE_ERRORS.labels("rate_limit").inc()
        if self._throttle.ready():
            logger.warning(
                "rate-limit storage failed in a %s (%s); %s",
                what,
                type(getattr(err, "storage_error", err)).__name__,
                "the reservation expires with its window"
                if what == "settle"
                else ("refusing requests" if self.deny_on_error else "serving without quotas"),
            )
        if self.deny_on_error and raise_on_deny:
            raise StorageUnavailableError(
                "The rate-limit storage is unavailable; try again shortly.", retry_after=5
            ) from err


def _shown(limit: Limit, amount: int) -> float | int:
    return amount / MICRO_USD if limit.counts is Counts.BUDGET else amount


def breaker_key_plan(
    keys: Sequence[str], state_keys: Callable[[str], tuple[str, str]] | None
) -> list[str]:
    """The cooldown keys read in the reservation batch: open-until and failures per key."""
    if state_keys is None:
        return []
    return [name for key in keys for name in state_keys(key)]


def rate_limit_headers(windows: list[WindowState]) -> dict[str, str]:
    """x-ratelimit-* for the tightest request window and the tightest token window."""
    headers: dict[str, str] = {}
    for counts in (Counts.REQUESTS, Counts.TOKENS):
        relevant = [w for w in windows if w.limit.counts is counts]
        if not relevant:
            continue
        tightest = min(relevant, key=lambda w: (w.remaining, w.reset_at))
        headers[f"x-ratelimit-limit-{counts.value}"] = str(tightest.limit.item.amount)
        headers[f"x-ratelimit-remaining-{counts.value}"] = str(tightest.remaining)
        headers[f"x-ratelimit-reset-{counts.value}"] = format_reset(tightest.reset_at - time.time())
    return headers
