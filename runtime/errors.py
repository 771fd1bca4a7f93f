"""The one error hierarchy. Every failure a caller can see is an ``LlmfnError``.

The gateway turns these into the OpenAI error shape in one place
(``runtime.gateway.http_errors``); nothing else builds error bodies. Messages
never carry secrets (keys, tokens, credentials).
"""
from __future__ import annotations


class LlmfnError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


class InvalidRequest(LlmfnError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class ModelNotFound(LlmfnError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(LlmfnError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class AuthenticationFailed(LlmfnError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(LlmfnError):
    status = 403
    type = "permission_error"
    code = "model_not_allowed"


class RateLimited(LlmfnError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


class QuotaExhausted(LlmfnError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class Overloaded(LlmfnError):
    """Capacity: queue full, pool at its limit, or a cold start too slow. Retryable."""
    status = 503
    type = "server_overloaded"
    code = "server_overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, int(retry_after)))})


class ModelLoading(Overloaded):
    code = "model_loading"


class ModelUnavailable(LlmfnError):
    """The model's weights cannot be had: missing object, bad credentials, bad checksum."""
    status = 503
    type = "server_error"
    code = "model_unavailable"


class LedgerUnavailable(LlmfnError):
    """The usage ledger cannot take the call's row (disk full, unwritable file, write
    backlog at its bound): the call is not dispatched unrecorded."""
    status = 503
    type = "server_error"
    code = "ledger_unavailable"


class UpstreamError(LlmfnError):
    """The worker serving the request died or broke the protocol mid-request."""
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class TemplateError(ValueError):
    """A template problem, naming its path in the template (``Resources.Fn.Properties.Timeout: ...``).
    Not an ``LlmfnError``: it stops a command before anything serves."""
