"""The one reader of ``template.yaml`` (AWS SAM): typed specs —
parameters, models and their pools, functions with their events, async
settings and quotas. Nothing else parses the template; everything else
consumes these specs. Pure data: it starts nothing."""
from runtime.errors import TemplateError
from runtime.template.event_spec import EventSpec, HttpEvent, InvokeConfigSpec, S3Event, ScheduleEvent
from runtime.template.function_spec import FunctionSpec
from runtime.template.model_spec import ModelConfig, PoolConfig, parse_model_flag
from runtime.template.parameters import parse_parameter_overrides
from runtime.template.reader import Template, load_template, parse_template, read_document

__all__ = ["EventSpec", "HttpEvent", "S3Event", "ScheduleEvent", "InvokeConfigSpec", "FunctionSpec",
           "TemplateError", "ModelConfig", "PoolConfig", "parse_model_flag", "parse_parameter_overrides",
           "load_template", "parse_template", "read_document", "Template"]
