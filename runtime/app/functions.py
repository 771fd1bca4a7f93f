"""Functions in the template: ``AWS::Serverless::Function`` resources (with
``Globals.Function`` applied) turned into typed specs. llmfn's own per-function
settings live in the resource's ``Metadata.llmfn`` (foreign content that
CloudFormation allows on any resource)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EventType = Literal["HttpApi", "Api", "S3", "Schedule"]


class TemplateError(ValueError):
    """A template problem, naming the resource and property at fault."""


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_MAX_BYTES = 4096
# What ``llmfn deploy`` may change per version, as SAM property -> FunctionSpec field.
DEPLOYABLE = {"Handler": "handler", "Timeout": "timeout", "MemorySize": "memory_size",
              "Environment": "environment"}


class QuotaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    daily_tokens: int | None = Field(None, ge=1)
    monthly_tokens: int | None = Field(None, ge=1)


class FunctionLlm(BaseModel):
    """``Metadata.llmfn`` of a function: the models it may call and its limits."""
    model_config = ConfigDict(extra="forbid")
    models: list[str] | None = None  # None: every model the gateway serves
    quotas: dict[str, QuotaSpec] = Field(default_factory=dict)  # per model; "*" for all
    max_instances: int = Field(10, ge=1, le=1000)
    usage_access: Literal["own", "all"] = "own"  # "all": may read every resource's usage report
    idle_timeout: float = Field(300.0, gt=0)


class EventSpec(BaseModel):
    name: str
    type: EventType
    properties: dict[str, Any] = Field(default_factory=dict)

    @property
    def http_method(self) -> str:
        return str(self.properties.get("Method", "ANY")).upper()

    @property
    def http_path(self) -> str:
        return str(self.properties.get("Path", "$default"))


class FunctionSpec(BaseModel):
    name: str
    code_uri: Path
    handler: str = Field(pattern=r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")
    runtime: str = "python3.11"
    timeout: float = Field(3.0, gt=0, le=900)
    memory_size: int = Field(128, ge=128, le=10240)
    environment: dict[str, str] = Field(default_factory=dict)
    layers: list[Path] = Field(default_factory=list)
    events: list[EventSpec] = Field(default_factory=list)
    llm: FunctionLlm = Field(default_factory=FunctionLlm)

    @field_validator("environment")
    @classmethod
    def _environment(cls, env: dict[str, str]) -> dict[str, str]:
        # Lambda's rules: a variable a process could not be started with breaks every invoke.
        for key, value in env.items():
            if not ENV_NAME.fullmatch(key):
                raise ValueError(f"{key!r}: a variable name is letters, digits and _, not starting with a digit")
            if "\0" in value:
                raise ValueError(f"{key}: a value may not contain a NUL character")
        if sum(len(k) + len(v) for k, v in env.items()) > ENV_MAX_BYTES:
            raise ValueError(f"the variables take more than {ENV_MAX_BYTES} bytes (Lambda's limit)")
        return env

    def allows_model(self, model: str) -> bool:
        return self.llm.models is None or model in self.llm.models


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """SAM's Globals merge: maps merge key by key, everything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _layer_path(ref: Any, resources: dict[str, Any], base_dir: Path, where: str) -> Path:
    if isinstance(ref, dict) and "Ref" in ref:
        layer = resources.get(ref["Ref"])
        if not layer or layer.get("Type") != "AWS::Serverless::LayerVersion":
            raise TemplateError(f"{where}: {ref['Ref']} is not an AWS::Serverless::LayerVersion")
        uri = (layer.get("Properties") or {}).get("ContentUri")
        if not isinstance(uri, str):
            raise TemplateError(f"Resources.{ref['Ref']}.Properties.ContentUri: a local path is required")
        return (base_dir / uri).resolve()
    if isinstance(ref, str) and not ref.startswith("arn:"):
        return (base_dir / ref).resolve()
    raise TemplateError(f"{where}: layer {ref!r} must be a local path or !Ref to a LayerVersion")


def parse_function(name: str, resource: dict[str, Any], globals_fn: dict[str, Any],
                   resources: dict[str, Any], base_dir: Path) -> FunctionSpec:
    where = f"Resources.{name}.Properties"
    props = _merge(globals_fn, resource.get("Properties") or {})
    for key in ("CodeUri", "Handler"):
        if key not in props:
            raise TemplateError(f"{where}.{key}: required")
    if not isinstance(props["CodeUri"], str):
        raise TemplateError(f"{where}.CodeUri: must be a local folder path")
    env = ((props.get("Environment") or {}).get("Variables") or {})
    # Intrinsics (!Ref, !GetAtt) cannot be resolved locally: like SAM, leave them unset;
    # --env-vars supplies real values.
    env = {k: v for k, v in env.items() if isinstance(v, (str, int, float, bool))}
    events = []
    for ev_name, ev in (props.get("Events") or {}).items():
        try:
            events.append(EventSpec(name=ev_name, type=ev.get("Type"), properties=ev.get("Properties") or {}))
        except (ValidationError, AttributeError):
            raise TemplateError(f"{where}.Events.{ev_name}.Type: must be one of HttpApi, Api, S3, "
                                "Schedule") from None
    meta = ((resource.get("Metadata") or {}).get("llmfn") or {})
    try:
        return FunctionSpec(
            name=name, code_uri=(base_dir / props["CodeUri"]).resolve(), handler=props["Handler"],
            runtime=props.get("Runtime", "python3.11"), timeout=props.get("Timeout", 3),
            memory_size=props.get("MemorySize", 128),
            environment={k: str(v) for k, v in env.items()},
            layers=[_layer_path(ref, resources, base_dir, f"{where}.Layers")
                    for ref in props.get("Layers") or []],
            events=events, llm=FunctionLlm(**meta))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        prop = {"handler": "Handler", "timeout": "Timeout", "memory_size": "MemorySize",
                "runtime": "Runtime", "environment": "Environment.Variables"}.get(field)
        place = f"{where}.{prop}" if prop else f"Resources.{name}.Metadata.llmfn.{field}"
        raise TemplateError(f"{place}: {err['msg'].removeprefix('Value error, ')}") from None


def with_config(base: FunctionSpec, config: Mapping[str, Any]) -> FunctionSpec:
    """``base`` with a deployed version's properties, validated by the same model as
    the template; a ``TemplateError`` names the property at fault."""
    if not isinstance(config, Mapping):
        raise TemplateError("config: must be an object of " + ", ".join(DEPLOYABLE))
    unknown = sorted(set(config) - set(DEPLOYABLE))
    if unknown:
        raise TemplateError(f"{unknown[0]}: not a deployable property (deployable: {', '.join(DEPLOYABLE)})")
    update = {DEPLOYABLE[k]: v for k, v in config.items()}
    try:
        return FunctionSpec.model_validate({**base.model_dump(), **update})
    except ValidationError as exc:
        err = exc.errors()[0]
        prop = {f: p for p, f in DEPLOYABLE.items()}.get(str(err["loc"][0]), str(err["loc"][0]))
        place = ".".join([prop, *(str(part) for part in err["loc"][1:])])
        raise TemplateError(f"{place}: {err['msg'].removeprefix('Value error, ')}") from None
