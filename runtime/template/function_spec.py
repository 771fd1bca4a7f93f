"""Functions in the template: ``AWS::Serverless::Function`` resources (with
``Globals.Function`` merged the SAM way and intrinsics resolved) turned into
typed specs. llmfn's own per-function settings live in the resource's
``Metadata.llmfn`` (foreign content that CloudFormation allows on any resource)."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.errors import TemplateError
from runtime.template.event_spec import EventSpec, InvokeConfigSpec, parse_event, parse_invoke_config
from runtime.template.intrinsics import Resolver, is_intrinsic
from runtime.template.sam_globals import merge

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
    invoke_config: InvokeConfigSpec = Field(default_factory=InvokeConfigSpec)
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


# The properties a local run uses; the others (Role, Policies, ...) are left as they are,
# so an intrinsic with no local value there is no error.
_USED = ("CodeUri", "Handler", "Runtime", "Timeout", "MemorySize", "Environment", "EventInvokeConfig")
_FIELD_PROPERTY = {"handler": "Handler", "timeout": "Timeout", "memory_size": "MemorySize",
                   "runtime": "Runtime", "environment": "Environment.Variables"}


def parse_function(name: str, resource: dict[str, Any], globals_fn: dict[str, Any],
                   resolver: Resolver, base_dir: Path) -> FunctionSpec:
    """One ``AWS::Serverless::Function``: Globals merged the SAM way, then intrinsics resolved."""
    where = f"Resources.{name}.Properties"
    own = resource.get("Properties") or {}
    if not isinstance(own, dict):
        raise TemplateError(f"{where}: must be a mapping")
    props = merge(globals_fn, own)
    used = {key: resolver.resolve(props[key], f"{where}.{key}") for key in _USED if key in props}
    for key in ("CodeUri", "Handler"):
        if key not in used:
            raise TemplateError(f"{where}.{key}: required")
    if not isinstance(used["CodeUri"], str):
        raise TemplateError(f"{where}.CodeUri: must be a local folder path")
    events = props.get("Events") or {}
    if not isinstance(events, dict):
        raise TemplateError(f"{where}.Events: must be a mapping of event name to event")
    meta = resolver.resolve((resource.get("Metadata") or {}).get("llmfn") or {}, f"Resources.{name}.Metadata.llmfn")
    try:
        return FunctionSpec(
            name=name, code_uri=(base_dir / used["CodeUri"]).resolve(), handler=used["Handler"],
            runtime=used.get("Runtime", "python3.11"), timeout=used.get("Timeout", 3),
            memory_size=used.get("MemorySize", 128),
            environment=_environment(used.get("Environment"), f"{where}.Environment"),
            layers=[_layer_path(ref, resolver, base_dir, f"{where}.Layers.{i}")
                    for i, ref in enumerate(_layers(props.get("Layers"), resolver, f"{where}.Layers"))],
            events=[parse_event(name, ev_name, ev, resolver.resolve, resolver.resources)
                    for ev_name, ev in events.items()],
            invoke_config=parse_invoke_config(used.get("EventInvokeConfig"), f"{where}.EventInvokeConfig"),
            llm=FunctionLlm(**meta))
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        prop = _FIELD_PROPERTY.get(field)
        place = f"{where}.{prop}" if prop else f"Resources.{name}.Metadata.llmfn.{field}"
        raise TemplateError(f"{place}: {err['msg'].removeprefix('Value error, ')}") from None


def _environment(env: Any, where: str) -> dict[str, str]:
    env = {} if env is None else env
    variables = (env.get("Variables") or {}) if isinstance(env, dict) else None
    if not isinstance(variables, dict):
        raise TemplateError(f"{where}: must be a mapping with Variables")
    for key, value in variables.items():
        if not isinstance(value, (str, int, float, bool)):
            raise TemplateError(f"{where}.Variables.{key}: must be a string, not {value!r}")
    return {k: str(v) for k, v in variables.items()}


def _layers(layers: Any, resolver: Resolver, where: str) -> list[Any]:
    # Items stay unresolved: a !Ref to a LayerVersion means its local folder, not its ARN.
    layers = resolver.resolve(layers, where) if is_intrinsic(layers) else layers or []
    if not isinstance(layers, list):
        raise TemplateError(f"{where}: must be a list of layers")
    return layers


def _layer_path(ref: Any, resolver: Resolver, base_dir: Path, where: str) -> Path:
    if isinstance(ref, dict) and "Ref" in ref and ref["Ref"] in resolver.resources:
        layer = resolver.resources[ref["Ref"]]
        if not isinstance(layer, dict) or layer.get("Type") != "AWS::Serverless::LayerVersion":
            raise TemplateError(f"{where}: {ref['Ref']} is not an AWS::Serverless::LayerVersion")
        uri_where = f"Resources.{ref['Ref']}.Properties.ContentUri"
        uri = resolver.resolve((layer.get("Properties") or {}).get("ContentUri"), uri_where)
        if not isinstance(uri, str):
            raise TemplateError(f"{uri_where}: a local path is required")
        return (base_dir / uri).resolve()
    ref = resolver.resolve(ref, where)
    if isinstance(ref, str) and not ref.startswith("arn:"):
        return (base_dir / ref).resolve()
    raise TemplateError(f"{where}: layer {ref!r} must be a local path or !Ref to a LayerVersion")


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
