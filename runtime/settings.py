"""Process settings: the one place that reads ``LLMFN_*``. Every field is an
environment variable (``LLMFN_<NAME>``) and, through :func:`add_flags`, a flag
of the commands that use it (``--<name>``), so flags, variables and ``--help``
are generated from one declaration and cannot drift."""
from __future__ import annotations

import argparse
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runtime.template.model_spec import PoolConfig

ENV_PREFIX = "LLMFN_"
CsvList = Annotated[list[str], NoDecode]  # a flag given again, or one comma-separated variable


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "llmfn"


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "llmfn"


def _csv(value: Any) -> Any:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    """The service: where it listens, what it serves, where it keeps its data."""
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    host: str = Field("127.0.0.1", description="Address every server listens on.")
    # LLMFN_PORT: the variable's former name, still read (LLMFN_GATEWAY_PORT wins)
    gateway_port: int = Field(8080, ge=0, le=65535, description="Port of the gateway (0: any free port).",
                              validation_alias=AliasChoices("gateway_port", "LLMFN_GATEWAY_PORT", "LLMFN_PORT"))
    api_port: int = Field(3000, ge=0, le=65535, description="Port of the HTTP API (the functions' routes).")
    lambda_port: int = Field(3001, ge=0, le=65535, description="Port of the Lambda API (invoke, deploy).")
    template: Path = Field(Path("template.yaml"), description="SAM template with the models and functions.")
    parameter_overrides: Annotated[list[str], NoDecode] = Field(default_factory=list, description=(
        "Template parameters, as SAM takes them: 'Key=Value Key2=Value2' or "
        "'ParameterKey=Key,ParameterValue=Value'."))
    env_vars: Path | None = Field(None, description="JSON file of environment variables per function "
                                                    "(SAM's --env-vars).")
    model: CsvList = Field(default_factory=list, description=(
        "Serve this model ([NAME=]SOURCE: s3://bucket/key.gguf, a path, or 'embedded'); repeatable; "
        "replaces the template's models."))
    api_keys: SecretStr = Field(SecretStr(""), description="Comma-separated static API keys (set it in the "
                                "environment or use --api-keys-file: a command line is visible to every local user).")
    api_keys_file: Path | None = Field(None, description="File of static API keys, one per line (or comma-separated).")
    require_keys: bool | None = Field(None, description="Require an API key on the gateway and the Lambda API "
                                      "(true/false). Unset: required once any key has been configured or "
                                      "created; revoking keys never opens the gateway again.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where downloaded models are kept.")
    s3_endpoint_url: str | None = Field(None, description="S3 endpoint for s3:// models, triggers and deploys "
                                        "(moto, MinIO, AWS). Unset under serve: the embedded S3.")
    data_dir: Path = Field(default_factory=default_data_dir,
                           description="Where the usage ledger, the API keys and the admin key are kept "
                                       "(made private: the dir 0700, its files 0600).")
    admin_key: SecretStr | None = Field(None, description="The admin key: deploy, rollback, keys, /admin/* and "
                                        "everyone's usage (set it in the environment or use --admin-key-file). "
                                        "Unset: the data dir's admin.key, which serve creates at first start.")
    admin_key_file: Path | None = Field(None, description="File holding the admin key.")
    redis_url: str | None = Field(None, description="Redis for quota counters shared by several gateways.")
    database_url: SecretStr | None = Field(None, description=(
        "postgresql://USER@HOST/DB: keep the ledger, API keys, deployments and event deliveries there, "
        "shared by every gateway given the same URL (a password belongs in PGPASSWORD or ~/.pgpass). "
        "Unset: SQLite files in the data dir."))
    ray_address: str | None = Field(None, description=(
        "The Ray cluster of pools whose backend is ray, as ray.init takes it (auto: the cluster this "
        "machine is a node of). Unset: RAY_ADDRESS's, else a local one started for the service; "
        "only when a pool uses the ray backend."))
    log_level: str = Field("INFO", description="Logging level.")
    log_format: Literal["text", "json"] = Field("text", description=(
        "How the service's log records and the function log lines are written to stderr: text, or "
        "json (one JSON object per line)."))
    log_retention_lines: int = Field(10_000, ge=1, description="Function log lines kept per function in the "
                                     "data dir's log store (llmfn logs); older ones are dropped.")
    log_retention_days: float = Field(7.0, gt=0, description="Days the log store keeps a function log line.")
    log_file: Path | None = Field(None, description="Write the functions' output and their START/END/REPORT "
                                                    "lines to this file instead of stderr (SAM's --log-file).")
    warm_containers: Literal["EAGER", "LAZY"] = Field("LAZY", description=(
        "EAGER: start one instance of every function at start; LAZY: start instances as invocations "
        "need them (SAM's --warm-containers)."))
    reload: bool = Field(True, description="Pick up changes to the template, a function's CodeUri files or its "
                                           "layers at the next invocation, with no restart.")
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
    failure_destination: str = Field("s3://llmfn-failures/async", description=(
        "Where an asynchronous invocation that failed every try is written, for functions whose "
        "EventInvokeConfig names no OnFailure destination."))
    retry_delay_s: float = Field(60.0, ge=0, description="First delay before an asynchronous invocation is "
                                                          "tried again (doubled each time, as Lambda does).")
    s3_poll_s: float = Field(1.0, gt=0, description="How often the S3 trigger lists its buckets (seconds).")
    delivery_lease_s: float = Field(30.0, gt=0, description=(
        "How long a replica holds an event it delivers without renewing its lease (seconds, renewed every "
        "third of it); a replica that dies mid-delivery has its events taken over by another after this."))
    debug_port: int | None = Field(None, ge=1, le=65535, description=(
        "Start the debugged function's instance under debugpy on 127.0.0.1:PORT, waiting for a debugger to "
        "attach before its handler runs (its timeout suspended); needs the 'debug' extra."))
    debug_function: str | None = Field(None, description=(
        "The function --debug-port debugs (default: the only function, or the one invoked)."))

    _split = field_validator("model", mode="before")(_csv)
    _one = field_validator("parameter_overrides", mode="before")(lambda v: [v] if isinstance(v, str) else v)
    _upper = field_validator("warm_containers", mode="before")(lambda v: v.upper() if isinstance(v, str) else v)

    def store(self, name: str) -> Path | str:
        """Where the store ``name`` (ledger, keys, deliveries, deployments) keeps its
        records: the database URL, or the SQLite file ``<data dir>/<name>.sqlite3``."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return self.data_dir / f"{name}.sqlite3"

    @property
    def logs_path(self) -> Path:
        return self.data_dir / "logs.sqlite3"

    @property
    def deployments_dir(self) -> Path:
        return self.data_dir / "deployments"

    @property
    def admin_key_path(self) -> Path:
        return self.admin_key_file or self.data_dir / "admin.key"


class ClientSettings(BaseSettings):
    """Commands that talk to a running service (deploy, rollback, keys)."""
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    endpoint: str = Field("http://127.0.0.1:3001", description="The running service's Lambda API.")
    deploy_bucket: str | None = Field(None, description="Bucket for the code bundles.")


class _PoolBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    def overrides(self) -> dict[str, Any]:
        return {_POOL_FIELDS.get(k, k): v for k, v in self.model_dump(exclude_none=True).items()}


# Ray's own names read well in a template's pool; as flags and variables they say
# they are the pool's (--pool-backend / LLMFN_POOL_BACKEND).
_POOL_FLAG_NAMES = {name: f"pool_{name}" for name in ("backend", "num_cpus", "num_gpus", "resources")}
_POOL_FIELDS = {flag: name for name, flag in _POOL_FLAG_NAMES.items()}


def _pool_flag_type(annotation: Any) -> Any:
    # a mapping comes as text (JSON or NAME=AMOUNT pairs), which PoolConfig reads
    return str if typing.get_origin(annotation) is dict else annotation


# Pool settings given as flags or variables: each one set overrides every served
# model's pool (the template's too); unset ones leave the template's value.
PoolSettings: type[_PoolBase] = create_model(
    "PoolSettings", __base__=_PoolBase, __doc__="Pool settings for every model, over the template's.",
    **{_POOL_FLAG_NAMES.get(name, name): (_pool_flag_type(info.annotation) | None,
                                          Field(None, description=info.description))
       for name, info in PoolConfig.model_fields.items()})


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel], fields: Iterable[str] | None = None,
              *, flags: dict[str, tuple[str, ...]] | None = None, defaults: dict[str, Any] | None = None) -> None:
    """One flag per settings field, named (``--field-name``, or ``flags``) and described
    from the field, with its variable in the help. Values are strings until the
    settings model validates them; a flag's default (``defaults``) beats the variable."""
    flags, defaults = flags or {}, defaults or {}
    for name in fields or model.model_fields:
        info = model.model_fields[name]
        names = flags.get(name) or ("--" + name.replace("_", "-"),)
        kw: dict[str, Any] = {"dest": name, "default": defaults.get(name),
                              "help": f"{info.description} [env {ENV_PREFIX}{name.upper()}]"}
        if typing.get_origin(info.annotation) is list:
            kw.update(action="append", metavar=name.upper())
        elif typing.get_origin(info.annotation) is typing.Literal:
            choices = typing.get_args(info.annotation)
            kw.update(choices=choices, type=_one_of(choices))
        parser.add_argument(*names, **kw)


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    """A flag's value as the choice it names, whatever its case (``eager`` is ``EAGER``)."""
    by_lower = {c.lower(): c for c in choices}
    return lambda value: by_lower.get(value.lower(), value)


def from_flags(model: type[BaseModel], args: argparse.Namespace, **fixed: Any):
    """The settings: flags given on the command line over ``LLMFN_*`` over defaults.
    A bad value is a ``ValueError`` naming the flag and its variable."""
    given = {k: v for k in model.model_fields if (v := getattr(args, k, None)) is not None}
    try:
        return model(**{**given, **fixed})
    except ValidationError as exc:
        raise ValueError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err["loc"] else ""
        where = f"--{name.replace('_', '-')} / {ENV_PREFIX}{name.upper()}" if name else "settings"
        shown = isinstance(err.get("input"), (str, int, float)) and "key" not in name  # never a secret
        got = f" (got {err['input']!r})" if shown else ""
        lines.append(f"{where}: {err['msg']}{got}")
    return "; ".join(lines)
