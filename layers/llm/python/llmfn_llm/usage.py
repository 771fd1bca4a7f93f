"""What this invocation has used and may still use, read from the gateway.

Owns the two read-only invocation routes (``/v1/invocation/usage`` and
``/v1/invocation/quota``); it goes through the invocation's own
``openai.OpenAI`` client, so the key stays inside the SDK's auth header and
never reaches a message or a repr here.
"""
from __future__ import annotations

from typing import Any

import openai

USAGE_PATH = "/invocation/usage"
QUOTA_PATH = "/invocation/quota"
FIELDS = ("calls", "prompt_tokens", "completion_tokens", "total_tokens")
# Bookkeeping reads should fail fast rather than eat the invocation's time.
READ_TIMEOUT_S = 5.0


def _read(client: openai.OpenAI, path: str, params: dict[str, str] | None = None) -> Any:
    options: dict[str, Any] = {"timeout": READ_TIMEOUT_S}
    if params:
        options["params"] = params
    return client.get(path, cast_to=object, options=options)


def _field(name: str) -> property:
    return property(lambda self: self.as_dict()[name], doc=f"{name} used so far (read live).")


class InvocationUsage:
    """Tokens this invocation has used so far; every read asks the gateway."""

    def __init__(self, client: openai.OpenAI):
        self._client = client
        self._last: dict[str, int] | None = None

    calls = _field("calls")
    prompt_tokens = _field("prompt_tokens")
    completion_tokens = _field("completion_tokens")
    total_tokens = _field("total_tokens")

    def as_dict(self) -> dict[str, int]:
        data = _read(self._client, USAGE_PATH)
        self._last = {name: int(data.get(name) or 0) for name in FIELDS}
        return dict(self._last)

    def __repr__(self) -> str:
        # The last figures read, if any: a repr must not make a network call.
        shown = self._last if self._last is not None else "not read yet"
        return f"InvocationUsage({shown})"

    dict = as_dict


def remaining_tokens(client: openai.OpenAI, model: str | None = None) -> int | None:
    """Tokens this invocation may still use (for ``model``), or None if unlimited."""
    try:
        data = _read(client, QUOTA_PATH, {"model": model} if model else None)
    except openai.NotFoundError:  # a gateway without quotas
        return None
    remaining = data.get("remaining_tokens") if isinstance(data, dict) else None
    return None if remaining is None else int(remaining)
