"""Who is calling: API keys in ``Authorization: Bearer``. With no key
configured the gateway is a private endpoint and accepts any or no key."""
from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from aiohttp import web

from runtime.errors import AuthenticationFailed

PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.json"})


@dataclass(frozen=True)
class Principal:
    kind: str  # "anonymous" | "key"
    name: str


ANONYMOUS = Principal("anonymous", "anonymous")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class StaticKeys:
    """Keys from settings; only their hashes are kept in memory."""

    def __init__(self, keys: frozenset[str]):
        self._hashes = [(_digest(k), f"key-{i}") for i, k in enumerate(sorted(keys))]

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def authenticate(self, request: web.Request) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationFailed("You didn't provide an API key. Provide it in the "
                                       "Authorization header as 'Bearer YOUR_KEY'.", code="missing_api_key")
        digest = _digest(token.strip())
        for h, name in self._hashes:
            if hmac.compare_digest(h, digest):
                return Principal("key", name)
        raise AuthenticationFailed("Incorrect API key provided.")


PRINCIPAL = "principal"


def auth_middleware(keys: StaticKeys):
    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path not in PUBLIC_PATHS and request.method != "OPTIONS":
            request[PRINCIPAL] = keys.authenticate(request)
        return await handler(request)
    return middleware
