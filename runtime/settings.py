"""Process settings. Every field is an environment variable (``LLMFN_<NAME>``),
and every CLI flag of ``llmfn serve`` mirrors one of them, so the same program is
configured the same way on a laptop and in a container."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
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
    api_keys: SecretStr = Field(SecretStr(""), description="Comma-separated static API keys (set it in the "
                                "environment or use --api-keys-file: a command line is visible to every local user).")
    api_keys_file: Path | None = Field(None, description="File of static API keys, one per line (or comma-separated).")
    require_keys: bool | None = Field(None, description="Require an API key on the gateway and the Lambda API "
                                      "(true/false). Unset: required once any key has been configured or "
                                      "created; revoking keys never opens the gateway again.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where downloaded models are kept.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for s3:// models (moto, MinIO, AWS).")
    data_dir: Path = Field(default_factory=default_data_dir,
                           description="Where the usage ledger, the API keys and the admin key are kept "
                                       "(made private: the dir 0700, its files 0600).")
    admin_key: SecretStr | None = Field(None, description="The admin key: deploy, rollback, keys, /admin/* and "
                                        "everyone's usage (set it in the environment or use --admin-key-file). "
                                        "Unset: the data dir's admin.key, which serve creates at first start.")
    admin_key_file: Path | None = Field(None, description="File holding the admin key.")
    redis_url: str | None = Field(None, description="Redis for quota counters shared by several gateways.")
    log_level: str = Field("INFO", description="Logging level.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024,
                                description="Largest request body the gateway reads (bytes); larger is a 413.")
    max_messages: int = Field(2048, ge=1, description="Most chat messages in one request.")
    max_tools: int = Field(128, ge=1, description="Most tools in one chat request.")
    max_tools_bytes: int = Field(256 * 1024, ge=1024,
                                 description="Largest size of a chat request's tool definitions (JSON bytes).")
    # Deployed functions: what one bundle may hold, and the asynchronous (Event) invocations queued.
    bundle_max_bytes: int = Field(50 * 2**20, ge=1, description="Largest deployable bundle (zip), in bytes.")
    bundle_max_unzipped_bytes: int = Field(250 * 2**20, ge=1,
                                           description="Largest total size of a bundle's files, unzipped.")
    bundle_max_entries: int = Field(20_000, ge=1, description="Most entries (files, folders) in one bundle.")
    event_queue_limit: int = Field(1000, ge=1, description="Event invocations waiting or running; "
                                                           "more are refused with a 429.")

    @property
    def ledger_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    @property
    def keys_path(self) -> Path:
        return self.data_dir / "keys.sqlite3"

    @property
    def admin_key_path(self) -> Path:
        return self.admin_key_file or self.data_dir / "admin.key"

    def key_set(self) -> frozenset[str]:
        from runtime.datadir import read_secret_file

        text = self.api_keys.get_secret_value()
        if self.api_keys_file is not None:
            text += "," + read_secret_file(self.api_keys_file, "API keys").replace("\n", ",")
        return frozenset(k.strip() for k in text.split(",") if k.strip())
