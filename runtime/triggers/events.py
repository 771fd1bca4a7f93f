"""Event payloads other than HTTP ones: the S3 notification record and the
EventBridge scheduled event that the S3 and schedule triggers send, and the
sample events of ``llmfn generate-event`` (shaped like ``sam local
generate-event`` output; the API Gateway samples are built by ``apigw``).
"""
from __future__ import annotations

import base64
import inspect
import itertools
import secrets
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from runtime.template.pseudo import LOCAL_ACCOUNT_ID, LOCAL_REGION
from runtime.triggers.apigw import HttpRequestData, http_api_event, match_route, rest_api_event

DEFAULT_REGION = LOCAL_REGION

# A per-process counter keeps sequencers of records stamped in the same nanosecond ordered.
_SEQUENCE = itertools.count()


def s3_put_record(bucket: str, key: str, size: int, etag: str, event_time: datetime | None = None, *,
                  region: str = DEFAULT_REGION, event_name: str = "ObjectCreated:Put",
                  source_ip: str = "127.0.0.1", principal_id: str = "EXAMPLE",
                  configuration_id: str = "llmfn-s3-trigger", version_id: str | None = None,
                  sequencer: str | None = None) -> dict[str, Any]:
    """One S3 event notification record (``eventVersion`` 2.1) for an object that was written.

    ``key`` is the plain object key; like S3, the record carries it URL-encoded
    with spaces as ``+`` (handlers ``unquote_plus`` it). ``etag`` may carry the
    quotes S3's API returns; notifications have none.
    """
    event_time = event_time or datetime.now(UTC)
    s3_object: dict[str, Any] = {"key": quote_plus(key, safe="/"), "size": int(size), "eTag": etag.strip('"')}
    if version_id:
        s3_object["versionId"] = version_id
    s3_object["sequencer"] = sequencer or _sequencer(event_time)
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": region,
        "eventTime": _iso8601(event_time, milliseconds=True),
        "eventName": event_name,
        "userIdentity": {"principalId": principal_id},
        "requestParameters": {"sourceIPAddress": source_ip},
        "responseElements": {
            "x-amz-request-id": secrets.token_hex(8).upper(),
            "x-amz-id-2": base64.b64encode(secrets.token_bytes(48)).decode(),
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": configuration_id,
            "bucket": {"name": bucket, "ownerIdentity": {"principalId": principal_id},
                       "arn": f"arn:aws:s3:::{bucket}"},
            "object": s3_object,
        },
    }


def s3_event(*records: dict[str, Any]) -> dict[str, Any]:
    """The notification a function receives: its records under ``Records``."""
    return {"Records": list(records)}


def rule_arn(rule: str, *, region: str = DEFAULT_REGION, account_id: str = LOCAL_ACCOUNT_ID) -> str:
    return f"arn:aws:events:{region}:{account_id}:rule/{rule}"


def scheduled_event(rule_arn: str, time: datetime | None = None) -> dict[str, Any]:
    """The EventBridge "Scheduled Event" a schedule rule sends; region and account come from the ARN."""
    parts = rule_arn.split(":")
    region, account = (parts[3], parts[4]) if len(parts) >= 6 else (DEFAULT_REGION, LOCAL_ACCOUNT_ID)
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": _iso8601(time or datetime.now(UTC), milliseconds=False),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


def _iso8601(moment: datetime, *, milliseconds: bool) -> str:
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{moment.microsecond // 1000:03d}Z" if milliseconds else f"{text}Z"


def _sequencer(moment: datetime) -> str:
    # S3 sequencers are opaque hex strings that sort in event order for one key.
    nanos = int(moment.timestamp() * 1_000_000) * 1000 + next(_SEQUENCE) % 1000
    return f"{nanos:018X}"


# --- llmfn generate-event -----------------------------------------------------

_SAMPLE_BODY = '{"test": "body"}'
_SAMPLE_HOST = f"id.execute-api.{DEFAULT_REGION}.amazonaws.com"


def _sample_request(method: str, path: str, body: str) -> HttpRequestData:
    headers = [("Accept", "*/*"), ("Content-Type", "application/json"), ("Host", _SAMPLE_HOST),
               ("User-Agent", "Custom User Agent String"), ("X-Forwarded-Proto", "https"),
               ("X-Forwarded-Port", "443"), ("Header2", "value1"), ("Header2", "value2"),
               ("Cookie", "cookie1=value1; cookie2=value2")]
    return HttpRequestData(method=method.upper(), path="/" + path.lstrip("/"),
                           raw_query="parameter1=value1&parameter1=value2&parameter2=value",
                           headers=headers, body=body.encode("utf-8"), source_ip="192.168.0.1",
                           host=_SAMPLE_HOST, port=443)


def _apigateway_http(method: str = "POST", path: str = "/path/to/resource", body: str = _SAMPLE_BODY,
                     stage: str = "$default") -> dict[str, Any]:
    return http_api_event(_sample_request(method, path, body), route_key="$default",
                          path_parameters=None, stage=stage, api_id="id")


def _apigateway_aws_proxy(method: str = "POST", path: str = "/path/to/resource", body: str = _SAMPLE_BODY,
                          resource: str = "/{proxy+}", stage: str = "prod") -> dict[str, Any]:
    req = _sample_request(method, path, body)
    matched = match_route([("ANY", resource)], req.method, req.path)
    return rest_api_event(req, resource=resource, path_parameters=matched[1] if matched else None,
                          stage=stage, api_id="1234567890")


def _s3_put(bucket: str = "example-bucket", key: str = "test/key", size: int = 1024,
            etag: str = "0123456789abcdef0123456789abcdef", region: str = DEFAULT_REGION) -> dict[str, Any]:
    return s3_event(s3_put_record(bucket, key, int(size), etag, region=region))


def _schedule(rule: str = "ExampleRule", region: str = DEFAULT_REGION,
              account_id: str = LOCAL_ACCOUNT_ID) -> dict[str, Any]:
    return scheduled_event(rule_arn(rule, region=region, account_id=account_id))


_GENERATORS: dict[tuple[str, str], Callable[..., dict[str, Any]]] = {
    ("apigateway", "aws-proxy"): _apigateway_aws_proxy,
    ("apigateway", "http"): _apigateway_http,
    ("s3", "put"): _s3_put,
    ("schedule", "scheduled-event"): _schedule,
}
# SAM's own names for the same samples, so `sam local generate-event` habits work.
_ALIASES = {
    ("apigateway", "http-api-proxy"): ("apigateway", "http"),
    ("cloudwatch", "scheduled-event"): ("schedule", "scheduled-event"),
}

SERVICES: dict[str, list[str]] = {
    service: [event for owner, event in _GENERATORS if owner == service] for service, _ in _GENERATORS
}


def sample_event(service: str, event: str | None = None, **options: Any) -> dict[str, Any]:
    """A sample event, as ``llmfn generate-event SERVICE EVENT --option value`` prints it.

    ``event`` may be left out when the service has one kind of event. Options
    use underscores (``account_id``); unknown services, events or options raise
    ``ValueError`` naming the valid choices.
    """
    generator = _GENERATORS[_resolve(service, event)]
    valid = list(inspect.signature(generator).parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for {service} {event or ''}".rstrip()
                         + f"; valid options: {', '.join(valid)}")
    return generator(**options)


def _resolve(service: str, event: str | None) -> tuple[str, str]:
    if event is None and len(SERVICES.get(service, [])) == 1:
        event = SERVICES[service][0]
    key = _ALIASES.get((service, event or ""), (service, event or ""))
    if key in _GENERATORS:
        return key
    if key[0] not in SERVICES:
        raise ValueError(f"unknown service {service!r}; valid services: {', '.join(sorted(SERVICES))}")
    raise ValueError(f"unknown event {event!r} for service {service!r}; "
                     f"valid events: {', '.join(SERVICES[key[0]])}")
