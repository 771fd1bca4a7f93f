"""The OpenAI SDK clients that ``context.llm`` and ``context.allm`` are.

Owns client construction and reuse; must not hold a client across processes
or across event loops.
"""
from __future__ import annotations

import functools
import os
import ssl
import threading
from typing import Any

try:
    import openai
except ImportError as exc:  # pragma: no cover - depends on how the function was packaged
    raise ImportError(
        "llmfn_llm needs the openai package: add it to the function's package "
        "or to another layer"
    ) from exc

from .config import GatewayEndpoint

# Building an OpenAI client costs tens of milliseconds (TLS set-up), so one
# root client per gateway is kept for the process and each invocation gets a
# cheap with_options() copy that shares its connection pool.
_roots: dict[str, openai.OpenAI] = {}
_roots_pid = os.getpid()
_lock = threading.Lock()


def sync_client(config: GatewayEndpoint, timeout: float | None) -> openai.OpenAI:
    """An ``openai.OpenAI`` for this invocation, sharing the process's connections."""
    global _roots_pid
    with _lock:
        if _roots_pid != os.getpid():  # forked: the parent's sockets are not ours
            _roots.clear()
            _roots_pid = os.getpid()
        root = _roots.get(config.api_base)
        if root is None or root.is_closed():
            root = _roots[config.api_base] = openai.OpenAI(
                base_url=config.api_base, api_key=config.api_key
            )
    return root.with_options(
        api_key=config.api_key, max_retries=config.max_retries, **_timeout(timeout)
    )


def async_client(config: GatewayEndpoint, timeout: float | None) -> openai.AsyncOpenAI:
    """A fresh ``openai.AsyncOpenAI``: an async connection pool belongs to the
    event loop that opened it, and a handler may run on a new loop each time.
    The TLS context, the costly part of a new client, is shared by the process."""
    return openai.AsyncOpenAI(
        base_url=config.api_base,
        api_key=config.api_key,
        max_retries=config.max_retries,
        http_client=openai.DefaultAsyncHttpxClient(verify=_tls_context()),
        **_timeout(timeout),
    )


@functools.lru_cache(maxsize=1)
def _tls_context() -> ssl.SSLContext:
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with the SDK's HTTP client
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _timeout(timeout: float | None) -> dict[str, Any]:
    return {} if timeout is None else {"timeout": timeout}
