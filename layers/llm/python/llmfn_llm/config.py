"""Where the gateway is and which key to use: arguments, then env vars.

Owns the lookup order and its error messages; must never put the API key
into a message, a repr or a log line.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# (url variable, key variable), in the order they are consulted.
REMOTE_ENV = ("LLMFN_GATEWAY_URL", "LLMFN_API_KEY")
RUNTIME_ENV = ("OPENAI_BASE_URL", "OPENAI_API_KEY")
MAX_RETRIES_ENV = "LLMFN_MAX_RETRIES"
DEFAULT_MAX_RETRIES = 2


class ConfigError(RuntimeError):
    """The layer cannot tell which gateway to use, or with which key."""


@dataclass(frozen=True)
class GatewayEndpoint:
    """An OpenAI API base (``.../v1``), its key and the client retry count."""

    api_base: str
    api_key: str = field(repr=False)
    max_retries: int = DEFAULT_MAX_RETRIES

    @property
    def origin(self) -> str:
        return self.api_base.removesuffix("/v1")

    @classmethod
    def resolve(
        cls,
        base_url: str | None = None,
        api_key: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> GatewayEndpoint:
        """Arguments first; each missing half comes from LLMFN_GATEWAY_URL /
        LLMFN_API_KEY when LLMFN_GATEWAY_URL is set, else from OPENAI_BASE_URL /
        OPENAI_API_KEY."""
        env = os.environ if environ is None else environ
        # Keys are never mixed across the two pairs: an OPENAI_API_KEY may be a
        # real OpenAI key, and must not be sent to a remote llmfn gateway.
        url_var, key_var = REMOTE_ENV if env.get(REMOTE_ENV[0]) else RUNTIME_ENV
        url = base_url or env.get(url_var) or ""
        key = api_key or env.get(key_var) or ""
        if not url and not key:
            raise ConfigError(
                "llmfn_llm: no LLM gateway configured. Set LLMFN_GATEWAY_URL and "
                "LLMFN_API_KEY (a remote llmfn gateway), or OPENAI_BASE_URL and "
                "OPENAI_API_KEY (set by the llmfn runtime), or pass base_url= and "
                "api_key= to llmfn_llm.attach()."
            )
        if not url:
            raise ConfigError(f"llmfn_llm: {key_var} is set but {url_var} is not; set both.")
        if not key:
            raise ConfigError(f"llmfn_llm: {url_var} is set but {key_var} is not; set both.")
        source = "base_url" if base_url else url_var
        return cls(api_base=api_base(url, source), api_key=key, max_retries=max_retries(env))


def api_base(url: str, source: str) -> str:
    """``https://host`` and ``https://host/v1`` both give ``https://host/v1``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"llmfn_llm: {source} must be an http(s) URL such as https://llm.example.com")
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def max_retries(env: Mapping[str, str]) -> int:
    raw = env.get(MAX_RETRIES_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_RETRIES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"llmfn_llm: {MAX_RETRIES_ENV} must be a non-negative integer, got {raw!r}")
    return value
