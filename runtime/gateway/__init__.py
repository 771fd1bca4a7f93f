"""The OpenAI-compatible HTTP API (aiohttp): the route table (``routes``), auth,
errors, SSE, charging calls to the ledger and quotas, metrics and the OpenAPI
document. It validates, counts tokens with the
model's own tokenizer and dispatches to ``runtime.pool``; it never runs a
model itself."""
from runtime.gateway.app import Gateway, GatewayConfig, build_app, build_gateway

__all__ = ["Gateway", "GatewayConfig", "build_app", "build_gateway"]
