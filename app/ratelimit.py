"""Quotas through `limits`, per deployment and per client token (its internals: app.hooks.limits).

Requests are counted on admission, atomically in the storage, so N concurrent requests against a
limit of L admit exactly L across threads, workers and hosts sharing one Redis. Tokens and cost
are charged when the answer is known; a window already spent refuses the next request.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from limits import (
    RateLimitItem,
    RateLimitItemPerDay,
    RateLimitItemPerHour,
    RateLimitItemPerMinute,
    RateLimitItemPerMonth,
)
from limits.errors import StorageError
from limits.storage import Storage, storage_from_string
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from . import metrics
from .config import Config, TokenConfig
from .cooldown import LogThrottle
from .errors import BudgetExceededError, RateLimitError, StorageUnavailableError
from .hooks.limits import SweptMemoryStorage

logger = logging.getLogger(__name__)

STRATEGIES: dict[str, type[RateLimiter]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
# A dead or slow Redis must never stall a request: short socket timeouts, no client retries.
REDIS_TIMEOUT_SECONDS = 0.25
MICRO_USD = 1_000_000  # budgets are counted in millionths of a dollar
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

    @property
    def identifiers(self) -> tuple[str, str, str]:
        """What names the limit's counters in storage (with the window, added by `limits`)."""
        return (self.counts.value, self.scope, self.owner)


@dataclass(frozen=True)
class WindowState:
    limit: Limit
    remaining: int
    reset_at: float  # epoch seconds


def make_storage(uri: str) -> Storage:
    """The `limits` storage for a URI; Redis ones get short timeouts and no hidden retries."""
    if uri.startswith("memory"):
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


def _items(
    owner: str,
    source,
    fields: Iterable[tuple[Counts, str, type[RateLimitItem]]],
    scope: str,
    scale: float = 1,
) -> list[Limit]:
    limits = []
    for counts, name, item_cls in fields:
        amount = getattr(source, name, 0) or 0
        if amount > 0:
            item = item_cls(max(1, math.floor(amount * scale)))
            limits.append(Limit(counts, item, owner, name, scope))
    return limits


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


class Quotas:
    """Admission and charging against every configured limit."""

    def __init__(self, config: Config, storage: Storage | None = None) -> None:
        settings = config.rate_limits
        self.storage = storage or make_storage(settings.storage)
        self.limiter = STRATEGIES[settings.strategy](self.storage)
        # Tokens and budgets are counted in large amounts (a moving window would store one entry
        # per token), so they always use the sliding-window counter: two counters per window.
        self.usage_limiter = SlidingWindowCounterRateLimiter(self.storage)
        self.deny_on_error = settings.on_storage_error == "deny"
        self.storage_errors = 0
        self._throttle = LogThrottle()
        self.models: dict[str, list[Limit]] = {}
        self.model_tokens: dict[str, list[Limit]] = {}
        for model in config.models:
            key = Owner.DEPLOYMENT.key(model.key)
            self.models[key] = _items(key, model, _REQUEST_FIELDS, settings.strategy)
            self.model_tokens[key] = _items(key, model, _TOKEN_FIELDS, USAGE_SCOPE)
        self.tokens: dict[str, list[Limit]] = {}
        self.token_usage: dict[str, list[Limit]] = {}
        for token in config.tokens:
            key = Owner.TOKEN.key(token.name)
            self.tokens[key] = _items(key, token, _REQUEST_FIELDS, settings.strategy)
            self.token_usage[key] = _items(key, token, _TOKEN_FIELDS, USAGE_SCOPE) + _items(
                key, token, _BUDGET_FIELDS, USAGE_SCOPE, scale=MICRO_USD
            )

    @property
    def shared(self) -> bool:
        return redis_client(self.storage) is not None

    def healthy(self) -> bool:
        try:
            return bool(self.storage.check())
        except Exception:  # noqa: BLE001 - a health probe only reports.
            return False

    def _limiter(self, limit: Limit) -> RateLimiter:
        return self.limiter if limit.counts is Counts.REQUESTS else self.usage_limiter

    def _window(self, limit: Limit) -> WindowState:
        stats = self._limiter(limit).get_window_stats(limit.item, *limit.identifiers)
        return WindowState(limit, max(0, stats.remaining), stats.reset_time)

    def _first_spent(self, requests: list[Limit]) -> Limit | None:
        """A spent request window among all but the first, checked before any is counted.

        hit() checks and counts atomically, which makes admission exact; checking the later
        windows first keeps a refusal from using up the earlier ones. The first needs no check
        of its own: its hit comes before any other, so a refusal there counts nothing.
        """
        for limit in requests[1:]:
            if not self.limiter.test(limit.item, *limit.identifiers):
                return limit
        return None

    # -- client tokens ------------------------------------------------------------------------

    def admit_client(self, token: TokenConfig) -> list[WindowState]:
        """Count a request against the token's limits; 429 if any is spent.

        Returns the windows shown in the x-ratelimit-* headers: the token's first request limit
        and first token limit.
        """
        key = Owner.TOKEN.key(token.name)
        requests = self.tokens.get(key, [])
        usage = self.token_usage.get(key, [])
        if not requests and not usage:
            return []
        try:
            # Tokens and budgets are charged afterwards; a spent window refuses the next one.
            # Its window read is the check (remaining >= 1 is exactly the limiter's test()), so
            # the first one's also serves the x-ratelimit-*-tokens headers: one call less.
            usage_windows = [self._window(limit) for limit in usage]
            for window in usage_windows:
                if window.remaining < 1:
                    raise self._refusal(window.limit, window)
            blocked = self._first_spent(requests)
            if blocked is not None:
                raise self._refusal(blocked)
            for limit in requests:
                if not self.limiter.hit(limit.item, *limit.identifiers):
                    raise self._refusal(limit)
            shown = [self._window(requests[0])] if requests else []
            return shown + usage_windows[:1]
        except StorageError as err:
            self._storage_failed(err)
            return []

    def _refusal(self, limit: Limit, state: WindowState | None = None) -> RateLimitError:
        metrics.QUOTA_REFUSALS.labels("client", limit.name).inc()
        state = state or self._window(limit)
        wait = max(1.0, state.reset_at - time.time())
        if limit.counts is Counts.BUDGET:
            return BudgetExceededError(
                f"The {limit.name.replace('_', ' ')} of this API key is spent.", retry_after=wait
            )
        return RateLimitError(
            f"Rate limit reached: {limit.name.replace('_', ' ')} "
            f"({limit.item.amount}) for this API key.",
            retry_after=wait,
            headers=rate_limit_headers([state]),
        )

    # -- deployments --------------------------------------------------------------------------

    def admit_deployment(self, deployment: str) -> float | None:
        """Count a request on a deployment: None if admitted, else when it has room again."""
        key = Owner.DEPLOYMENT.key(deployment)
        requests = self.models.get(key, [])
        tokens = self.model_tokens.get(key, [])
        if not requests and not tokens:
            return None
        try:
            for limit in tokens:
                if not self.usage_limiter.test(limit.item, *limit.identifiers):
                    return self._window(limit).reset_at
            blocked = self._first_spent(requests)
            if blocked is not None:
                return self._window(blocked).reset_at
            for limit in requests:
                if not self.limiter.hit(limit.item, *limit.identifiers):
                    return self._window(limit).reset_at
            return None
        except StorageError as err:
            self._storage_failed(err)
            return None

    def report(self, owner: str) -> dict[str, dict]:
        """What is left of each of an owner's limits (`Owner.key(...)`), for /admin/status."""
        limits = (
            self.models.get(owner, [])
            + self.model_tokens.get(owner, [])
            + self.tokens.get(owner, [])
            + self.token_usage.get(owner, [])
        )
        report = {}
        for limit in limits:
            try:
                window = self._window(limit)
            except StorageError:
                report[limit.name] = {"limit": limit.item.amount, "remaining": None}
                continue
            amount, remaining = limit.item.amount, window.remaining
            if limit.counts is Counts.BUDGET:
                amount, remaining = amount / MICRO_USD, remaining / MICRO_USD
            report[limit.name] = {
                "limit": amount,
                "remaining": remaining,
                "resets_in_seconds": round(max(0.0, window.reset_at - time.time()), 1),
            }
        return report

    # -- charging -----------------------------------------------------------------------------

    def charge(
        self, token: TokenConfig, deployment: str, total_tokens: int, cost_usd: float
    ) -> None:
        """Charge an answer's tokens (and cost) to its deployment and its client token."""
        deployment_usage = self.model_tokens.get(Owner.DEPLOYMENT.key(deployment), [])
        charges = [(limit, total_tokens) for limit in deployment_usage]
        for limit in self.token_usage.get(Owner.TOKEN.key(token.name), []):
            amount = (
                math.ceil(cost_usd * MICRO_USD) if limit.counts is Counts.BUDGET else total_tokens
            )
            charges.append((limit, amount))
        limiter = self.usage_limiter
        try:
            for limit, amount in charges:
                if amount > 0 and not limiter.hit(limit.item, *limit.identifiers, cost=amount):
                    # More than is left: fill the window so the next request is refused.
                    remaining = limiter.get_window_stats(limit.item, *limit.identifiers).remaining
                    if remaining > 0:
                        limiter.hit(limit.item, *limit.identifiers, cost=remaining)
        except StorageError as err:
            self._storage_failed(err, raise_on_deny=False)

    def _storage_failed(self, err: StorageError, raise_on_deny: bool = True) -> None:
        self.storage_errors += 1
        metrics.STORAGE_ERRORS.labels("rate_limit").inc()
        if self._throttle.ready():
            logger.warning(
                "rate-limit storage failed (%s); %s",
                type(getattr(err, "storage_error", err)).__name__,
                "refusing requests" if self.deny_on_error else "serving without quotas",
            )
        if self.deny_on_error and raise_on_deny:
            raise StorageUnavailableError(
                "The rate-limit storage is unavailable; try again shortly.", retry_after=5
            ) from err


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
