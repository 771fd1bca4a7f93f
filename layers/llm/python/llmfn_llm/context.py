"""``attach(context)``: what the layer adds to a function's context object.

Owns the context attributes (``llm``, ``allm``, ``llm_usage``,
``get_remaining_tokens``) and the per-invocation timeout; it reads the
configuration on every call, because the llmfn runtime changes the key per
invocation.
"""
from __future__ import annotations

import functools
from typing import Any, TypeVar

from .clients import async_client, sync_client
from .config import GatewayEndpoint
from .usage import InvocationUsage, remaining_tokens

ContextT = TypeVar("ContextT")
# A request gets at least this long even when the invocation is nearly over,
# so that it fails on the platform's deadline rather than at once.
MIN_TIMEOUT_S = 1.0


def attach(
    context: ContextT, *, base_url: str | None = None, api_key: str | None = None
) -> ContextT:
    """Give ``context`` an LLM bound to the gateway; returns the same object."""
    config = GatewayEndpoint.resolve(base_url=base_url, api_key=api_key)
    timeout = invocation_timeout(context)
    llm = sync_client(config, timeout)
    context.llm = llm
    context.allm = async_client(config, timeout)
    context.llm_usage = InvocationUsage(llm)
    context.get_remaining_tokens = functools.partial(remaining_tokens, llm)
    return context


def invocation_timeout(context: Any) -> float | None:
    """Seconds left in the invocation, or None when the context cannot tell."""
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(remaining_ms):
        return None
    return max(remaining_ms() / 1000.0, MIN_TIMEOUT_S)
