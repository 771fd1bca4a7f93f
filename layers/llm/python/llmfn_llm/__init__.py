"""The LLM layer: puts an LLM into a function's context.

``attach(context)`` sets ``context.llm`` (an ``openai.OpenAI`` bound to the
llmfn gateway), ``context.allm`` (its ``AsyncOpenAI`` twin), ``context.llm_usage``
and ``context.get_remaining_tokens()``; ``llmfn_llm.handler.handler`` is a
wrapper handler for Lambda-style platforms. The package is shipped as a Lambda
layer, so it must stay pure Python, depend on nothing but ``openai`` and the
standard library, import nothing from ``runtime``, and never log or repeat the
API key.
"""
from __future__ import annotations

from .config import ConfigError, GatewayEndpoint
from .context import attach
from .usage import InvocationUsage, remaining_tokens

__all__ = [
    "ConfigError",
    "GatewayEndpoint",
    "InvocationUsage",
    "attach",
    "remaining_tokens",
]
