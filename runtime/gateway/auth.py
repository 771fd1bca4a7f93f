"""Who is calling, and what they may use.

- Invocation tokens (``llmfn-inv-...``), issued by the function runtime for one
  invocation: one function, its allowed models, valid until the invocation ends.
- API keys in ``Authorization: Bearer``. Keys are required once any key has been
  configured or created (or when ``require_keys`` says so); until then the
  gateway is a private endpoint and accepts any or no key.
- The admin key, which the control plane (``/admin/*``, everyone's usage,
  deploy and rollback on the Lambda API) always needs.
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from aiohttp import web
from cachetools import TTLCache

from runtime.accounting.keys import KEY_PREFIX, KeyStore
from runtime.accounting.status import CallerKind, ServiceType
from runtime.errors import AuthenticationFailed, PermissionDenied
from runtime.gateway.usage_page import PUBLIC_PATHS as PAGE_PATHS

PUBLIC_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/metrics", "/openapi.json"}) | PAGE_PATHS
ADMIN_PREFIX = "/admin/"  # every route under it is the control plane
TOKEN_PREFIX = "llmfn-inv-"


@dataclass(frozen=True)
class Principal:
    kind: CallerKind
    name: str
    invocation_id: str | None = None
    models: frozenset[str] | None = None  # None: every model
    reads_all_usage: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", CallerKind(self.kind))  # a plain string is accepted

    @property
    def subject(self) -> tuple[ServiceType, str]:
        """(service type, resource): the caller as the ledger and the quotas name it."""
        return self.kind.service_type, self.name

    def authorize(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            what = f"{self.kind.service_type} '{self.name}'"
            raise PermissionDenied(f"The {what} is not allowed to use the model '{model}'",
                                   param="model")


ANONYMOUS = Principal(CallerKind.ANONYMOUS, "anonymous")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class StaticKeys:
    """Keys from settings; only their hashes are kept in memory."""

    def __init__(self, keys: frozenset[str]):
        self._hashes = [(_digest(k), f"key-{i}") for i, k in enumerate(sorted(keys))]

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def lookup(self, secret: str) -> Principal | None:
        digest = _digest(secret)
        for h, name in self._hashes:
            if hmac.compare_digest(h, digest):
                return Principal(CallerKind.KEY, name)
        return None


@dataclass
class UsageTally:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: collections.Counter = field(default_factory=collections.Counter)  # error code -> calls

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class InvocationTokens:
    """Tokens scoped to one invocation, and the usage each invocation ran up."""
    _live: dict[bytes, Principal] = field(default_factory=dict)
    _ended: TTLCache = field(default_factory=lambda: TTLCache(maxsize=100_000, ttl=3600))
    _usage: dict[str, UsageTally] = field(default_factory=lambda: collections.defaultdict(UsageTally))

    def issue(self, function: str, invocation_id: str, models: list[str] | None,
              reads_all_usage: bool = False) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        self._live[_digest(token)] = Principal(CallerKind.FUNCTION, function, invocation_id,
                                               frozenset(models) if models is not None else None,
                                               reads_all_usage)
        return token

    def revoke(self, token: str) -> UsageTally:
        """End the token; returns (and forgets) what its invocation used."""
        principal = self._live.pop(_digest(token), None)
        if principal is None:
            return UsageTally()
        self._ended[_digest(token)] = True
        return self._usage.pop(principal.invocation_id, UsageTally())

    def lookup(self, token: str) -> Principal:
        digest = _digest(token)
        principal = self._live.get(digest)
        if principal is not None:
            return principal
        if digest in self._ended:
            raise AuthenticationFailed("The invocation token has expired: its invocation has ended.",
                                       code="expired_token")
        raise AuthenticationFailed("Incorrect invocation token provided.")

    def record(self, invocation_id: str, prompt: int, completion: int, error: str | None = None) -> None:
        u = self._usage[invocation_id]
        u.calls += 1
        u.prompt_tokens += prompt
        u.completion_tokens += completion
        if error:
            u.errors[error] += 1

    def usage(self, invocation_id: str) -> UsageTally:
        return self._usage.get(invocation_id) or UsageTally()


class Authenticator:
    """Invocation tokens, the admin key, keys from the key store and static keys.
    Keys are required when ``require_keys`` says so or, unset, once any key has
    been configured or created: revoking every key does not open the gateway."""

    def __init__(self, keys: StaticKeys, invocations: InvocationTokens, *,
                 store: KeyStore | None = None, admin_key: str | None = None,
                 require_keys: bool | None = None):
        self.keys, self.invocations, self.store = keys, invocations, store
        self._admin = _digest(admin_key) if admin_key else None
        self.require_keys = require_keys

    @property
    def keys_required(self) -> bool:
        if self.require_keys is not None:
            return self.require_keys
        return self.keys.enabled or (self.store is not None and self.store.ever_had_keys)

    def authenticate(self, request: web.Request) -> Principal:
        return self.authenticate_token(bearer_token(request.headers.get("Authorization", "")))

    async def authenticate_fresh(self, token: str) -> Principal:
        """``authenticate_token``, after looking a stored-key-shaped token this gateway
        has never seen up in the key store (off the loop): a key created through
        another gateway sharing the database works here at its first use."""
        store = self.store
        if (store is not None and token.startswith(KEY_PREFIX) and token.isascii()
                and store.lookup(token) is None and not store.is_revoked(token)):
            await asyncio.get_running_loop().run_in_executor(None, store.find, token)
        return self.authenticate_token(token)

    def authenticate_token(self, token: str) -> Principal:
        # No key is non-ASCII: such a token is never hashed, only refused (or ignored).
        principal = self._known(token) if token.isascii() else None
        if principal is not None:
            return principal
        if not self.keys_required:
            return ANONYMOUS
        if not token:
            raise AuthenticationFailed("You didn't provide an API key. Provide it in the "
                                       "Authorization header as 'Bearer YOUR_KEY'.", code="missing_api_key")
        raise AuthenticationFailed("Incorrect API key provided.")

    def _known(self, token: str) -> Principal | None:
        if not token:
            return None
        if token.startswith(TOKEN_PREFIX):
            return self.invocations.lookup(token)
        if self._admin is not None and hmac.compare_digest(self._admin, _digest(token)):
            return Principal(CallerKind.ADMIN, "admin", reads_all_usage=True)
        if self.store is not None:
            record = self.store.lookup(token)
            if record is not None:
                return Principal(CallerKind.KEY, record.name, models=frozenset(record.models)
                                 if record.models is not None else None)
            if self.store.is_revoked(token):
                raise AuthenticationFailed("This API key has been revoked.", code="revoked_api_key")
        return self.keys.lookup(token)

    def authenticate_admin(self, token: str) -> Principal:
        """The control plane: the admin key, whether or not keys are required."""
        principal = self.authenticate_token(token)
        if principal.kind is CallerKind.ADMIN:
            return principal
        if principal.kind is not CallerKind.ANONYMOUS:
            raise PermissionDenied("This action needs the admin key.", code="admin_key_required")
        if not token:
            raise AuthenticationFailed("This action needs the admin key. Provide it in the Authorization "
                                       "header as 'Bearer ADMIN_KEY'.", code="missing_api_key")
        raise AuthenticationFailed("Incorrect admin key provided.")


def bearer_token(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    return request.get(PRINCIPAL, ANONYMOUS)


def auth_middleware(auth: Authenticator):
    @web.middleware
    async def middleware(request: web.Request, handler):
        if _is_admin_route(request):
            request[PRINCIPAL] = auth.authenticate_admin(bearer_token(request.headers.get("Authorization", "")))
        elif request.path not in PUBLIC_PATHS and request.method != "OPTIONS":
            request[PRINCIPAL] = await auth.authenticate_fresh(
                bearer_token(request.headers.get("Authorization", "")))
        return await handler(request)
    return middleware


def _is_admin_route(request: web.Request) -> bool:
    # The matched route as well as the raw path, so no spelling of a path reaches an admin handler.
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else ""
    return request.path.startswith(ADMIN_PREFIX) or canonical.startswith(ADMIN_PREFIX)
