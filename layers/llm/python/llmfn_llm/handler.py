"""A wrapper handler for Lambda-style platforms, like the Datadog layer's.

Set the platform's handler to ``llmfn_llm.handler.handler`` and the real one
in ``LLMFN_HANDLER`` (``module.func``). Owns importing that handler once,
attaching the LLM and running ``async def`` handlers on one event loop kept
for the process; it must not change the event or the result.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import os
from collections.abc import Callable
from typing import Any

from .context import attach

HANDLER_ENV = "LLMFN_HANDLER"
SELF = f"{__name__}.handler"

_handlers: dict[str, Callable[..., Any]] = {}
# One loop for the process, so that async resources made in one warm
# invocation (sessions, clients) still work in the next.
_loop: asyncio.AbstractEventLoop | None = None


class HandlerError(RuntimeError):
    """LLMFN_HANDLER does not name a callable handler."""


def handler(event: Any, context: Any) -> Any:
    real = load_handler(os.environ.get(HANDLER_ENV, ""))
    attach(context)
    result = real(event, context)
    if inspect.isawaitable(result):
        result = _run(_finish(result, context))
    return result


def load_handler(spec: str) -> Callable[..., Any]:
    """The callable that ``spec`` (``package.module.func``) names, imported once."""
    found = _handlers.get(spec)
    if found is None:
        found = _handlers[spec] = _import(spec)
    return found


def _import(spec: str) -> Callable[..., Any]:
    if not spec:
        raise HandlerError(
            f"{HANDLER_ENV} is not set: set it to the function's handler as "
            f"'module.function' (e.g. 'app.handler'), and the platform's handler to {SELF}"
        )
    module_name, _, func_name = spec.strip().rpartition(".")
    if not module_name or not func_name:
        raise HandlerError(f"{HANDLER_ENV}={spec!r} is not 'module.function' (e.g. 'app.handler')")
    if spec.strip() == SELF:
        raise HandlerError(f"{HANDLER_ENV} names this wrapper; set it to the function's own handler")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"{HANDLER_ENV}={spec!r}: cannot import module {module_name!r}: {exc}") from exc
    func = getattr(module, func_name, None)
    if func is None:
        raise HandlerError(f"{HANDLER_ENV}={spec!r}: module {module_name!r} has no {func_name!r}")
    if not callable(func):
        raise HandlerError(f"{HANDLER_ENV}={spec!r}: {func_name!r} is not callable")
    return func


async def _finish(awaitable: Any, context: Any) -> Any:
    """Await the handler, then close this invocation's ``allm`` on the loop that
    opened its connections (the next invocation gets a new one)."""
    try:
        return await awaitable
    finally:
        await context.allm.close()


def _run(awaitable: Any) -> Any:
    global _loop
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    return _loop.run_until_complete(awaitable)
