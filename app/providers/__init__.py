"""The provider registry: which adapter serves a `provider:` name, and where by default."""

from __future__ import annotations

from ..config import ConfigError, ModelConfig
from ..providers.anthropic import AnthropicProvider
from ..providers.azure import AzureProvider
from ..providers.base import CallContext, ChatStream, PrimedStream, Provider
from ..providers.cloudflare import CloudflareProvider
from ..providers.cohere import CohereProvider
from ..providers.echo import EchoProvider
from ..providers.gigachat import GigaChatProvider
from ..providers.google import GoogleProvider
from ..providers.openai import OpenAIProvider
from ..upstream import UpstreamPool

__all__ = [
    "CallContext",
    "ChatStream",
    "PrimedStream",
    "Provider",
    "build_providers",
    "check_models",
]

# provider name -> (adapter, default API root). Names without a native adapter yet use the
# provider's OpenAI-compatible endpoint; an unknown name means a generic OpenAI-compatible one.
REGISTRY: dict[str, tuple[type[Provider], str | None]] = {
    "echo": (EchoProvider, None),
    "openai": (OpenAIProvider, "https://api.openai.com/v1"),
    "openrouter": (OpenAIProvider, "https://openrouter.ai/api/v1"),
    "groq": (OpenAIProvider, "https://api.groq.com/openai/v1"),
    "mistral": (OpenAIProvider, "https://api.mistral.ai/v1"),
    "deepseek": (OpenAIProvider, "https://api.deepseek.com/v1"),
    "together": (OpenAIProvider, "https://api.together.xyz/v1"),
    "huggingface": (OpenAIProvider, "https://router.huggingface.co/v1"),
    "github": (OpenAIProvider, "https://models.github.ai/inference"),
    "arliai": (OpenAIProvider, "https://api.arliai.com/v1"),
    "ollama": (OpenAIProvider, "http://127.0.0.1:11434/v1"),
    "glama": (OpenAIProvider, "https://glama.ai/api/gateway/openai/v1"),
    "anthropic": (AnthropicProvider, "https://api.anthropic.com/v1"),
    "google": (GoogleProvider, "https://generativelanguage.googleapis.com/v1beta"),
    "gemini": (GoogleProvider, "https://generativelanguage.googleapis.com/v1beta"),
    "cohere": (CohereProvider, "https://api.cohere.com"),
    "cloudflare": (CloudflareProvider, None),
    "azure": (AzureProvider, None),
    "gigachat": (GigaChatProvider, "https://gigachat.devices.sberbank.ru/api/v1"),
}


def lookup(provider: str) -> tuple[type[Provider], str | None]:
    return REGISTRY.get(provider, (OpenAIProvider, None))


def check_models(models: tuple[ModelConfig, ...]) -> list[str]:
    """Provider-specific problems of every model entry, with their paths."""
    problems = []
    for model in models:
        cls, default_url = lookup(model.provider)
        problems.extend(f"models[{model.index}].{p}" for p in cls.check(model, default_url))
        if model.responses and cls.responses is Provider.responses:
            problems.append(
                f"models[{model.index}].responses: provider {model.provider!r} does not serve "
                "the Responses API (its requests are translated without this flag)"
            )
    return problems


def build_providers(models: tuple[ModelConfig, ...], pool: UpstreamPool) -> list[Provider]:
    """One adapter per deployment, in config order; raises ConfigError if any is wrong."""
    problems = check_models(models)
    if problems:
        raise ConfigError(problems)
    adapters = []
    for model in models:
        cls, default_url = lookup(model.provider)
        adapters.append(cls(model, pool, default_url))
    return adapters
