"""The embedded S3 (moto's server on loopback): functions reach it with the
endpoint and credentials it hands out, and without moto it says what to install."""
from __future__ import annotations

import sys

import boto3
import pytest

from runtime.embedded_s3 import CREDENTIALS, EmbeddedS3, EmbeddedS3Unavailable


def test_a_function_stores_and_reads_objects_with_the_environment_it_is_given(monkeypatch):
    for key in CREDENTIALS:  # start() sets them where unset; put back what was there
        monkeypatch.delenv(key, raising=False)
    s3 = EmbeddedS3()
    url = s3.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        env = s3.function_environment()
        assert env["AWS_ENDPOINT_URL_S3"] == url
        client = boto3.client("s3", endpoint_url=url, region_name=env["AWS_DEFAULT_REGION"],
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        client.create_bucket(Bucket="docs")
        client.put_object(Bucket="docs", Key="a.txt", Body=b"hello")
        assert client.get_object(Bucket="docs", Key="a.txt")["Body"].read() == b"hello"
    finally:
        s3.stop()


def test_without_moto_it_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "moto.server", None)  # as if moto were not installed
    with pytest.raises(EmbeddedS3Unavailable, match=r"llmfn\[embedded-s3\]"):
        EmbeddedS3().start()
