"""The application model: ``template.yaml`` (AWS SAM) turned into typed specs —
parameters, models and their pools, functions with their events, async
settings and quotas. The one reader of the template: nothing else parses it.
Pure data: it starts nothing."""
from runtime.app.errors import TemplateError
from runtime.app.events import EventSpec, HttpEvent, InvokeConfigSpec, S3Event, ScheduleEvent
from runtime.app.functions import FunctionSpec
from runtime.app.models import ModelConfig, PoolConfig, parse_model_flag
from runtime.app.parameters import parse_parameter_overrides
from runtime.app.template import Template, load_template, parse_template

__all__ = ["EventSpec", "HttpEvent", "S3Event", "ScheduleEvent", "InvokeConfigSpec", "FunctionSpec",
           "TemplateError", "ModelConfig", "PoolConfig", "parse_model_flag", "parse_parameter_overrides",
           "load_template", "parse_template", "Template"]
