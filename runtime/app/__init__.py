"""The application model: ``template.yaml`` (AWS SAM) turned into typed objects —
models and their pools, functions, events, quotas. Pure data: it starts nothing."""
from runtime.app.models import ModelConfig, PoolConfig, parse_model_flag
from runtime.app.functions import EventSpec, FunctionSpec, TemplateError
from runtime.app.template import load_template, Template

__all__ = ["EventSpec", "FunctionSpec", "TemplateError", "ModelConfig", "PoolConfig", "parse_model_flag", "load_template", "Template"]
