"""A function's event sources and asynchronous-invocation settings as typed
specs: ``Events`` of type ``HttpApi``/``Api`` (method, path), ``S3`` (bucket,
event names, key filter) and ``Schedule`` (expression, enabled, input, rule
name), and ``EventInvokeConfig`` (retries, event age, on-failure destination).

Everything is checked here, at load time, so ``llmfn invoke`` reports an event
mistake as ``serve`` would; the triggers consume these specs and never read
the template. Intrinsics are already resolved by the caller, except a
``Bucket`` that is ``!Ref`` of a resource, which must be an ``AWS::S3::Bucket``.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.errors import TemplateError
from runtime.template.intrinsics import BUCKET
from runtime.template.schedule_expressions import parse_schedule

log = logging.getLogger("llmfn.template")

EVENT_TYPES = ("HttpApi", "Api", "S3", "Schedule")
MAX_RETRY_ATTEMPTS = 2
MAX_EVENT_AGE_S = 21600
MIN_EVENT_AGE_S = 60
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class HttpEvent(BaseModel):
    """An ``HttpApi`` (payload 2.0) or ``Api`` (REST, payload 1.0) event: a route."""
    model_config = ConfigDict(frozen=True)
    name: str
    type: Literal["HttpApi", "Api"]
    method: str = "ANY"
    path: str = "$default"


class S3Event(BaseModel):
    """An ``S3`` event: objects landing in ``bucket`` under ``prefix``, ending in ``suffix``."""
    model_config = ConfigDict(frozen=True)
    name: str
    type: Literal["S3"] = "S3"
    bucket: str
    events: list[str] = Field(default_factory=lambda: ["s3:ObjectCreated:*"])
    prefix: str = ""
    suffix: str = ""


class ScheduleEvent(BaseModel):
    """A ``Schedule`` event: an EventBridge rule firing on ``expression``."""
    model_config = ConfigDict(frozen=True)
    name: str
    type: Literal["Schedule"] = "Schedule"
    expression: str
    rule: str  # the EventBridge rule's name: Name, else FunctionEvent like SAM's logical id
    enabled: bool = True
    input: Any = None  # parsed Input; when set it replaces the scheduled event


EventSpec = Annotated[HttpEvent | S3Event | ScheduleEvent, Field(discriminator="type")]


class InvokeConfigSpec(BaseModel):
    """A function's ``EventInvokeConfig``; the defaults are Lambda's."""
    model_config = ConfigDict(frozen=True)
    maximum_retry_attempts: int = Field(MAX_RETRY_ATTEMPTS, ge=0, le=MAX_RETRY_ATTEMPTS)
    maximum_event_age_s: int = Field(MAX_EVENT_AGE_S, ge=MIN_EVENT_AGE_S, le=MAX_EVENT_AGE_S)
    on_failure: str | None = None  # "s3://bucket[/prefix]"; None: the runtime's default destination


Resolve = Callable[[Any, str], Any]


def parse_event(function: str, name: str, raw: Any, resolve: Resolve,
                resources: Mapping[str, Any]) -> HttpEvent | S3Event | ScheduleEvent:
    """One entry of a function's ``Events`` (Globals merged, intrinsics not yet resolved)."""
    where = f"Resources.{function}.Properties.Events.{name}"
    kind = raw.get("Type") if isinstance(raw, dict) else None
    if kind not in EVENT_TYPES:
        raise TemplateError(f"{where}.Type: must be one of {', '.join(EVENT_TYPES)}")
    where = f"{where}.Properties"
    props = raw.get("Properties") or {}
    if not isinstance(props, dict):
        raise TemplateError(f"{where}: must be a mapping")
    if kind == "S3":
        _check_bucket_ref(props.get("Bucket"), resources, f"{where}.Bucket")
    props = resolve(props, where)
    if kind == "S3":
        return _s3(name, props, where)
    if kind == "Schedule":
        return _schedule(function, name, props, where)
    return HttpEvent(name=name, type=kind, method=str(props.get("Method", "ANY")).upper(),
                     path=str(props.get("Path", "$default")))


def _check_bucket_ref(bucket: Any, resources: Mapping[str, Any], where: str) -> None:
    if isinstance(bucket, dict) and isinstance(bucket.get("Ref"), str) and bucket["Ref"] in resources:
        if (resources[bucket["Ref"]] or {}).get("Type") != BUCKET:
            raise TemplateError(f"{where}: an S3 event's Bucket must !Ref an AWS::S3::Bucket, "
                                f"not {bucket['Ref']}")


def _s3(name: str, props: Mapping[str, Any], where: str) -> S3Event:
    bucket = props.get("Bucket")
    if bucket is None:
        raise TemplateError(f"{where}.Bucket: required (a bucket name or !Ref to an AWS::S3::Bucket)")
    if not isinstance(bucket, str):
        raise TemplateError(f"{where}.Bucket: must be a bucket name or !Ref to an AWS::S3::Bucket")
    events = props.get("Events") or "s3:ObjectCreated:*"
    key_rules = (((props.get("Filter") or {}).get("S3Key") or {}).get("Rules") or [])
    filters = {str(r.get("Name", "")).lower(): str(r.get("Value", "")) for r in key_rules if isinstance(r, dict)}
    return S3Event(name=name, bucket=bucket, events=[events] if isinstance(events, str) else [str(e) for e in events],
                   prefix=filters.get("prefix", ""), suffix=filters.get("suffix", ""))


def _schedule(function: str, name: str, props: Mapping[str, Any], where: str) -> ScheduleEvent:
    expression = props.get("Schedule")
    if not isinstance(expression, str):
        raise TemplateError(f"{where}.Schedule: required, rate(...) or cron(...)")
    try:
        parse_schedule(expression)
    except ValueError as exc:
        raise TemplateError(f"{where}.Schedule: {exc}") from None
    return ScheduleEvent(name=name, expression=expression, rule=str(props.get("Name") or f"{function}{name}"),
                         enabled=_enabled(props), input=_input(props.get("Input"), where))


def _enabled(props: Mapping[str, Any]) -> bool:
    enabled = props.get("Enabled", True)
    if isinstance(enabled, str):
        enabled = enabled.strip().lower() != "false"
    return bool(enabled) and str(props.get("State", "ENABLED")).upper() != "DISABLED"


def _input(raw: Any, where: str) -> Any:
    if raw is None or isinstance(raw, (dict, list)):
        return raw  # a mapping in YAML is not SAM, but means the same
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        raise TemplateError(f"{where}.Input: must be a JSON string") from None


def parse_invoke_config(cfg: Any, where: str) -> InvokeConfigSpec:
    """``EventInvokeConfig`` (Globals merged, intrinsics resolved).

    The on-failure destination may be ``s3://bucket/prefix``, an S3 bucket ARN
    (what ``!GetAtt Bucket.Arn`` gives) or a bucket name (what ``!Ref Bucket``
    gives). SQS, SNS, Lambda and EventBridge destinations do not exist locally:
    they fall back to the runtime's default destination with a warning.
    """
    cfg = cfg or {}
    if not isinstance(cfg, dict):
        raise TemplateError(f"{where}: must be a mapping")
    retries = _int_in(cfg, "MaximumRetryAttempts", MAX_RETRY_ATTEMPTS, 0, MAX_RETRY_ATTEMPTS, where)
    max_age = _int_in(cfg, "MaximumEventAgeInSeconds", MAX_EVENT_AGE_S, MIN_EVENT_AGE_S, MAX_EVENT_AGE_S, where)
    on_failure = ((cfg.get("DestinationConfig") or {}).get("OnFailure") or {})
    return InvokeConfigSpec(maximum_retry_attempts=retries, maximum_event_age_s=max_age,
                            on_failure=_s3_destination(on_failure, f"{where}.DestinationConfig.OnFailure"))


def _int_in(cfg: Mapping[str, Any], key: str, default: int, low: int, high: int, where: str) -> int:
    value = cfg.get(key, default)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # a !Ref to a Number parameter gives a string
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TemplateError(f"{where}.{key}: must be an integer from {low} to {high}")
    return value


def _s3_destination(on_failure: Mapping[str, Any], where: str) -> str | None:
    target = on_failure.get("Destination")
    kind = str(on_failure.get("Type", "S3" if target else "")).upper()
    if not target:
        return None
    if kind not in ("S3", "S3BUCKET"):  # SAM spells it S3Bucket
        log.warning("%s: %s destinations are not emulated; failed events go to the default destination",
                    where, on_failure.get("Type"))
        return None
    if isinstance(target, str) and target.startswith("s3://"):
        return target.rstrip("/")
    if isinstance(target, str) and target.startswith("arn:aws:s3:::"):
        return "s3://" + target.removeprefix("arn:aws:s3:::").rstrip("/")
    if isinstance(target, str) and _BUCKET_NAME.fullmatch(target):
        return f"s3://{target}"
    raise TemplateError(f"{where}.Destination: must be s3://bucket/prefix, a bucket ARN, "
                        "or !Ref / !GetAtt of an AWS::S3::Bucket")
