"""Reading ``template.yaml``: AWS SAM with llmfn's settings under the top-level
``Metadata.llmfn`` key (foreign content that CloudFormation and cfn-lint allow)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError

from runtime.app.functions import FunctionSpec, TemplateError, parse_function
from runtime.app.models import ModelConfig, PoolConfig


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
    path: Path | None = None
    models: list[ModelConfig] = Field(default_factory=list)
    functions: dict[str, FunctionSpec] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)
    globals: dict[str, Any] = Field(default_factory=dict)
    raw: dict[str, Any] = Field(default_factory=dict)

    def function(self, name: str) -> FunctionSpec:
        try:
            return self.functions[name]
        except KeyError:
            known = ", ".join(self.functions) or "none"
            raise TemplateError(f"no function '{name}' in the template (functions: {known})") from None


def parse_template(doc: dict[str, Any], path: Path | None = None) -> Template:
    if not isinstance(doc, dict):
        raise TemplateError(f"{path or 'template'}: top level must be a mapping")
    meta = (doc.get("Metadata") or {}).get("llmfn") or {}
    models_doc = meta.get("models") or {}
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
    resources = doc.get("Resources") or {}
    globals_fn = (doc.get("Globals") or {}).get("Function") or {}
    base_dir = path.parent if path else Path.cwd()
    functions = {name: parse_function(name, res, globals_fn, resources, base_dir)
                 for name, res in resources.items()
                 if isinstance(res, dict) and res.get("Type") == "AWS::Serverless::Function"}
    return Template(path=path, models=models, functions=functions, resources=resources,
                    globals=doc.get("Globals") or {}, raw=doc)



def load_template(path: str | Path) -> Template:
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass
    except FileNotFoundError:
        raise TemplateError(f"{path}: no such template") from None
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path}: not valid YAML: {exc}") from None
    return parse_template(doc, path)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        return f"{loc}: {msg}" if loc else msg
    return str(exc)
