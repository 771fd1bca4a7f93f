"""Process settings. Every field is an environment variable (``LLMFN_<NAME>``),
and every CLI flag of ``llmfn serve`` mirrors one of them, so the same program is
configured the same way on a laptop and in a container."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "llmfn"


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "llmfn"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMFN_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the gateway listens on (0: any free port).")
    template: Path = Field(Path("template.yaml"), description="SAM template with the models and functions.")
    api_keys: str = Field("", description="Comma-separated static API keys; empty accepts any or no key.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where downloaded models are kept.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for s3:// models (moto, MinIO, AWS).")
    data_dir: Path = Field(default_factory=default_data_dir,
                           description="Where the usage ledger and the API keys are kept (SQLite).")
    admin_key: str | None = Field(None, description="Key for the usage and key routes of every resource.")
    redis_url: str | None = Field(None, description="Redis for quota counters shared by several gateways.")
    log_level: str = Field("INFO", description="Logging level.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024,
                                description="Largest request body the gateway reads (bytes); larger is a 413.")
    max_messages: int = Field(2048, ge=1, description="Most chat messages in one request.")
    max_tools: int = Field(128, ge=1, description="Most tools in one chat request.")
    max_tools_bytes: int = Field(256 * 1024, ge=1024,
                                 description="Largest size of a chat request's tool definitions (JSON bytes).")

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @property
    def keys_path(self) -> Path:
        return self.data_dir / "keys.sqlite3"

    def key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())
