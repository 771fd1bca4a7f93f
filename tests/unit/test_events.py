"""Sample and trigger events: S3 notification records, scheduled events, generate-event."""
from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote_plus

import pytest

from runtime.triggers.events import SERVICES, rule_arn, s3_event, s3_put_record, sample_event, scheduled_event

MOMENT = datetime(2026, 11, 21, 13, 45, 0, 123456, tzinfo=UTC)


def test_s3_put_record_shape():
    record = s3_put_record("photos", "in/cat.jpg", 2048, '"9b2cf535f27731c974343645a3985328"', MOMENT,
                           region="eu-west-1", version_id="v1")
    assert record["eventVersion"] == "2.1"
    assert record["eventSource"] == "aws:s3"
    assert record["awsRegion"] == "eu-west-1"
    assert record["eventTime"] == "2026-11-21T13:45:00.123Z"
    assert record["eventName"] == "ObjectCreated:Put"
    assert set(record["userIdentity"]) == {"principalId"}
    assert set(record["requestParameters"]) == {"sourceIPAddress"}
    assert set(record["responseElements"]) == {"x-amz-request-id", "x-amz-id-2"}
    s3 = record["s3"]
    assert s3["s3SchemaVersion"] == "1.0" and s3["configurationId"]
    assert s3["bucket"]["name"] == "photos"
    assert s3["bucket"]["arn"] == "arn:aws:s3:::photos"
    assert "principalId" in s3["bucket"]["ownerIdentity"]
    obj = s3["object"]
    assert obj["key"] == "in/cat.jpg"
    assert obj["size"] == 2048
    assert obj["eTag"] == "9b2cf535f27731c974343645a3985328"  # S3's API quotes stripped
    assert obj["versionId"] == "v1"
    assert re.fullmatch(r"[0-9A-F]+", obj["sequencer"])


@pytest.mark.parametrize("key, encoded", [
    ("my photos/cat 1.jpg", "my+photos/cat+1.jpg"),
    ("a+b=c.txt", "a%2Bb%3Dc.txt"),
    ("café.txt", "caf%C3%A9.txt"),
])
def test_s3_keys_are_url_encoded_like_aws(key, encoded):
    record = s3_put_record("b", key, 1, "e", MOMENT)
    assert record["s3"]["object"]["key"] == encoded
    assert unquote_plus(encoded) == key  # what handlers do to get the key back


def test_s3_sequencers_sort_in_event_order():
    first = s3_put_record("b", "k", 1, "e", MOMENT)["s3"]["object"]["sequencer"]
    later = s3_put_record("b", "k", 1, "e", MOMENT + timedelta(seconds=1))["s3"]["object"]["sequencer"]
    assert len(first) == len(later) and later > first


def test_s3_event_wraps_records():
    record = s3_put_record("b", "k", 1, "e", MOMENT)
    assert s3_event(record) == {"Records": [record]}


def test_scheduled_event_shape():
    arn = rule_arn("nightly", region="eu-central-1", account_id="111122223333")
    event = scheduled_event(arn, MOMENT)
    assert event["version"] == "0"
    uuid.UUID(event["id"])
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["account"] == "111122223333"
    assert event["region"] == "eu-central-1"
    assert event["time"] == "2026-11-21T13:45:00Z"
    assert event["resources"] == ["arn:aws:events:eu-central-1:111122223333:rule/nightly"]
    assert event["detail"] == {}


def test_services_listing():
    assert SERVICES == {"apigateway": ["aws-proxy", "http"], "s3": ["put"], "schedule": ["scheduled-event"]}


def test_generate_apigateway_http():
    event = sample_event("apigateway", "http", method="get", path="users/7", body="hi")
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/users/7"
    assert event["requestContext"]["http"]["method"] == "GET"
    assert event["body"] == "hi" and event["isBase64Encoded"] is False
    assert event["queryStringParameters"] == {"parameter1": "value1,value2", "parameter2": "value"}
    assert event["cookies"] and all(name == name.lower() for name in event["headers"])
    json.dumps(event)


def test_generate_apigateway_aws_proxy():
    event = sample_event("apigateway", "aws-proxy", method="PUT", path="/path/to/thing")
    assert event["httpMethod"] == "PUT"
    assert event["resource"] == "/{proxy+}"
    assert event["pathParameters"] == {"proxy": "path/to/thing"}
    assert json.loads(event["body"]) == {"test": "body"}
    assert event["multiValueQueryStringParameters"]["parameter1"] == ["value1", "value2"]
    assert event["requestContext"]["path"] == "/prod/path/to/thing"


def test_generate_s3_put_and_schedule():
    s3 = sample_event("s3", "put", bucket="inbox", key="new file.txt", size="10", etag="abc")
    obj = s3["Records"][0]["s3"]["object"]
    assert s3["Records"][0]["s3"]["bucket"]["name"] == "inbox"
    assert (obj["key"], obj["size"], obj["eTag"]) == ("new+file.txt", 10, "abc")
    scheduled = sample_event("schedule", rule="hourly")
    assert scheduled["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/hourly"]


def test_generate_event_accepts_sam_names():
    assert sample_event("cloudwatch", "scheduled-event")["detail-type"] == "Scheduled Event"
    assert sample_event("apigateway", "http-api-proxy")["version"] == "2.0"


def test_unknown_service_lists_valid_services():
    with pytest.raises(ValueError, match="unknown service 'sqs'.*apigateway, s3, schedule"):
        sample_event("sqs", "receive")


def test_unknown_event_lists_valid_events():
    with pytest.raises(ValueError, match="unknown event 'delete'.*put"):
        sample_event("s3", "delete")
    with pytest.raises(ValueError, match="aws-proxy, http"):
        sample_event("apigateway")  # more than one kind: the event must be named


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match="colour.*bucket, key, size, etag"):
        sample_event("s3", "put", colour="red")
