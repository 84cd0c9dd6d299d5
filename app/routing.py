"""Routing: which deployments may answer a request's `model`, in what order, and falling back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.config import Config
from app.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    RequestTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from app.providers import Provider

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Candidate:
    """One deployment that may answer, with the model id it is to be asked for."""

    provider: Provider
    upstream_model: str

    @property
    def name(self) -> str:
        return self.provider.model.name


@dataclass(frozen=True)
class Resolution:
    """What a request's `model` named (for the allow-list) and who may answer it, in order."""

    identifier: str
    is_category: bool
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class Outcome(Generic[T]):
    result: T
    candidate: Candidate
    attempts: int


class Router:
    """Resolves names, aliases, categories and wildcards; runs a call with fallback."""

    def __init__(self, config: Config, providers: list[Provider]) -> None:
        self.config = config
        self.providers = providers
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
        self._last_used: dict[int, float] = {}
        self._lock = threading.Lock()

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
        # Lowest priority first; among equals the least recently used, as the Go proxy did.
        ordered = sorted(
            providers, key=lambda p: (p.model.priority, self._last_used.get(id(p), 0.0))
        )
        return tuple(Candidate(p, p.model.upstream_model(requested)) for p in ordered)

    def run(self, resolution: Resolution, call: Callable[[Candidate], T]) -> Outcome[T]:
        """Call candidates in order until one answers; retryable failures move on."""
        last_error: UpstreamError | None = None
        attempts = 0
        for candidate in resolution.candidates[: self.config.routing.max_attempts]:
            attempts += 1
            with self._lock:
                self._last_used[id(candidate.provider)] = time.monotonic()
            try:
                result = call(candidate)
            except UpstreamError as err:
                err.extra_headers["x-ai-proxy-attempts"] = str(attempts)
                if not err.retryable:
                    raise
                logger.warning(
                    "deployment %s failed (%s); %s",
                    candidate.name,
                    err.code,
                    "trying the next" if attempts < len(resolution.candidates) else "none left",
                )
                last_error = err
                continue
            return Outcome(result, candidate, attempts)
        if last_error is None:
            raise ModelNotFoundError(f"No deployment of {resolution.identifier!r} is loaded.")
        cls = (
            UpstreamTimeoutError if isinstance(last_error, UpstreamTimeoutError) else UpstreamError
        )
        message = last_error.message
        if attempts > 1:
            message = f"All {attempts} deployments failed; the last: {message}"
        raise cls(message, headers={"x-ai-proxy-attempts": str(attempts)})

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
