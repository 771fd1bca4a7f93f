"""Model and pool configuration: what ``Metadata.llmfn.models`` in the template
and ``llmfn serve --model`` declare."""
from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class PoolConfig(BaseModel):
    """How one model's workers are run and scaled."""
    model_config = ConfigDict(extra="forbid")

    min_workers: int = Field(0, ge=0, description="Workers kept warm; 0 scales to zero.")
    max_workers: int = Field(1, ge=1, description="Upper bound of worker processes.")
    idle_timeout: float = Field(300.0, gt=0, description="Seconds without a request before a worker exits.")
    slots: int = Field(1, ge=1, le=64, description="Requests in flight per worker.")
    queue_limit: int = Field(64, ge=0, description="Requests that may wait for a slot; more get 503.")
    cold_start_timeout: float = Field(120.0, gt=0, description="Longest a request waits on a cold start.")
    queue_timeout: float = Field(300.0, gt=0, description="Longest a request waits for a busy slot.")
    n_ctx: int = Field(4096, ge=64, description="Context length of each slot, in tokens.")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU (-1: all, 0: CPU only).")
    n_threads: int | None = Field(None, ge=1, description="CPU threads per worker (default: llama.cpp's).")
    n_batch: int = Field(512, ge=1, description="Tokens per decode step (prompt chunks and running sequences).")
    kv_unified: bool = Field(True, description="One KV buffer for all sequences (measured faster for many "
                                               "short sequences); false gives each its own stream.")
    backend: Literal["local", "ray"] = Field("local", description=(
        "Where workers run: local processes, or Ray actors placed by a Ray cluster's scheduler "
        "(needs the 'ray' extra; see --ray-address)."))
    num_cpus: float = Field(1.0, ge=0, description="Ray backend: CPUs each worker actor reserves.")
    num_gpus: float = Field(0.0, ge=0, description="Ray backend: GPUs each worker actor reserves "
                                                   "(a fraction shares one).")
    resources: dict[str, float] = Field(default_factory=dict, description=(
        "Ray backend: custom resources each worker actor reserves, e.g. gpu_l4=1 or '{\"gpu_l4\": 1}' "
        "(a node group's rayStartParams resources)."))

    @field_validator("resources", mode="before")
    @classmethod
    def _resources_text(cls, value):
        """A flag or variable gives the mapping as text: JSON, or NAME=AMOUNT pairs."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("{"):
            return json.loads(value)
        pairs = [item.split("=", 1) for item in value.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("resources: give NAME=AMOUNT pairs (gpu_l4=1,zone_a=1) or a JSON object")
        return {k.strip(): v.strip() for k, v in pairs}

    @field_validator("resources")
    @classmethod
    def _custom_only(cls, value: dict[str, float]) -> dict[str, float]:
        if set(value) & {"CPU", "GPU"}:  # Ray refuses them there too
            raise ValueError("resources: CPUs and GPUs are asked for with num_cpus and num_gpus")
        if negative := sorted(k for k, v in value.items() if v < 0):
            raise ValueError(f"resources: {', '.join(negative)} must not be negative")
        return value

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")
        return self


class ModelLimits(BaseModel):
    """A model's own limits, applied to every caller (function or key) separately."""
    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)


class ModelConfig(BaseModel):
    """One served model: its name in the API, where its GGUF comes from, its pool."""
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    source: str = "embedded"
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    aliases: list[str] = Field(default_factory=list,
                               description="Other names clients may ask for (e.g. gpt-4o-mini).")
    limits: ModelLimits = Field(default_factory=ModelLimits)
    pool: PoolConfig = Field(default_factory=PoolConfig)


def parse_model_flag(flag: str, pool: PoolConfig | None = None) -> ModelConfig:
    """``NAME=SOURCE`` or just ``SOURCE`` (the name is the file's stem)."""
    name, sep, source = flag.partition("=")
    if not sep:
        source = flag
        stem = source.rstrip("/").rsplit("/", 1)[-1]
        name = re.sub(r"\.gguf$", "", stem) if source != "embedded" else "gemma3-270m"
    return ModelConfig(name=name, source=source, pool=pool or PoolConfig())
