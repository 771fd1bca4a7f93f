"""Process settings. Every field is an environment variable (``LLMFN_<NAME>``),
and every CLI flag of ``llmfn serve`` mirrors one of them, so the same program is
configured the same way on a laptop and in a container."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "llmfn"


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLMFN_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the gateway listens on.")
    port: int = Field(8080, ge=0, le=65535, description="Port the gateway listens on (0: any free port).")
    template: Path = Field(Path("template.yaml"), description="SAM template with the models and functions.")
    api_keys: str = Field("", description="Comma-separated static API keys; empty accepts any or no key.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where downloaded models are kept.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for s3:// models (moto, MinIO, AWS).")
    log_level: str = Field("INFO", description="Logging level.")

    def key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())
