"""The response cache (CONTRACT section 10): keys, stored entries, memory and Redis storage,
single flight, and the per-surface forms that assemble streams and replay stored answers."""

from __future__ import annotations

from .anthropic_forms import MessageForm
from .cache import Fault, ResponseCache, Result, Ticket
from .entries import CorruptEntry, Entry, decode, encode
from .forms import Assembler, CacheForm, SSEAssembler, pieces
from .keys import SHARED_SCOPE, CacheKey, key_body, make_key
from .openai_forms import ChatForm, CompletionForm, EmbeddingForm
from .responses_forms import ResponsesAssembler, ResponsesForm
from .stores import MemoryStore, RedisStore, StorageFailure, make_store

__all__ = [
    "SHARED_SCOPE",
    "Assembler",
    "CacheForm",
    "CacheKey",
    "ChatForm",
    "CompletionForm",
    "CorruptEntry",
    "EmbeddingForm",
    "Entry",
    "Fault",
    "MemoryStore",
    "MessageForm",
    "RedisStore",
    "ResponsesAssembler",
    "ResponsesForm",
    "ResponseCache",
    "Result",
    "SSEAssembler",
    "StorageFailure",
    "Ticket",
    "decode",
    "encode",
    "key_body",
    "make_key",
    "make_store",
    "pieces",
]
