"""Reading ``template.yaml``, the one place that does: AWS SAM with llmfn's
settings under the top-level ``Metadata.llmfn`` key (foreign content that
CloudFormation and cfn-lint allow). ``Parameters`` (with overrides),
``Conditions``, ``Mappings``, SAM's ``Globals`` merge and intrinsics are all
applied here, at load time, so every command reports the same mistakes."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from runtime.errors import TemplateError
from runtime.template.function_spec import FunctionSpec, parse_function
from runtime.template.intrinsics import FUNCTION, Resolver
from runtime.template.model_spec import ModelConfig, PoolConfig
from runtime.template.parameters import ParameterValue, resolve_parameters
from runtime.template.sam_globals import function_globals


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that keeps CloudFormation short-form tags (!Ref, !Sub, ...) as data."""


def _cfn_tag(loader: yaml.Loader, tag_suffix: str, node: yaml.Node) -> dict:
    fn = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {fn: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


class Template(BaseModel):
    """What the runtime uses of a template, every part typed and checked: nothing
    downstream reads the YAML again."""
    path: Path | None = None
    parameters: dict[str, ParameterValue] = Field(default_factory=dict, repr=False)  # NoEcho values too
    models: list[ModelConfig] = Field(default_factory=list)
    functions: dict[str, FunctionSpec] = Field(default_factory=dict)

    def function(self, name: str) -> FunctionSpec:
        try:
            return self.functions[name]
        except KeyError:
            known = ", ".join(self.functions) or "none"
            raise TemplateError(f"no function '{name}' in the template (functions: {known})") from None


def parse_template(doc: dict[str, Any], path: Path | None = None,
                   parameter_overrides: Mapping[str, str] | None = None) -> Template:
    """A template already read from YAML (tests build them in memory)."""
    if not isinstance(doc, dict):
        raise TemplateError(f"{path or 'template'}: top level must be a mapping")
    resources = _section(doc, "Resources")
    parameters = resolve_parameters(doc.get("Parameters"), parameter_overrides)
    resolver = Resolver(parameters, resources, conditions=_section(doc, "Conditions"),
                        mappings=_section(doc, "Mappings"))
    globals_fn = function_globals(doc.get("Globals"))
    base_dir = path.parent if path else Path.cwd()
    functions = {name: parse_function(name, res, globals_fn, resolver, base_dir)
                 for name, res in resources.items()
                 if isinstance(res, dict) and res.get("Type") == FUNCTION and resolver.included(name)}
    return Template(path=path, parameters=parameters, models=_models(doc, resolver), functions=functions)


def _section(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, dict):
        raise TemplateError(f"{key}: must be a mapping")
    return value


def _models(doc: dict[str, Any], resolver: Resolver) -> list[ModelConfig]:
    meta = (doc.get("Metadata") or {}).get("llmfn") or {}
    models_doc = resolver.resolve(meta.get("models") or {}, "Metadata.llmfn.models")
    if not isinstance(models_doc, dict):
        raise TemplateError("Metadata.llmfn.models: must be a mapping of model name to settings")
    models = []
    for name, spec in models_doc.items():
        spec = dict(spec or {})
        try:
            models.append(ModelConfig(name=name, source=spec.pop("source", "embedded"),
                                      sha256=spec.pop("sha256", None),
                                      pool=PoolConfig(**spec.pop("pool", {}) or {}), **spec))
        except (ValidationError, TypeError) as exc:
            raise TemplateError(f"Metadata.llmfn.models.{name}: {_first_error(exc)}") from None
    return models


def load_template(path: str | Path, parameter_overrides: Mapping[str, str] | None = None) -> Template:
    """The one reader of ``template.yaml``; every mistake is a ``TemplateError`` naming its path."""
    return parse_template(read_document(path), Path(path), parameter_overrides)


def read_document(path: str | Path) -> Any:
    """The template's YAML, CloudFormation's short tags (``!Ref``) included, not yet checked."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    except FileNotFoundError:
        raise TemplateError(f"{path}: no such template") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from None


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    return str(exc)
