"""Shared fixtures."""
from __future__ import annotations

import socket
import subprocess
import time
import uuid

import pytest

from tests.support.cli import need_binary
from tests.support.moto_server import AWS_ENV_TO_CLEAR, DUMMY_AWS_ENV, start_moto_server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Endpoint URL of moto's S3 server on loopback, with dummy AWS credentials in the env."""
    no_aws_files = tmp_path_factory.mktemp("aws") / "absent"
    with pytest.MonkeyPatch.context() as env:
        for name, value in DUMMY_AWS_ENV.items():
            env.setenv(name, value)
        for name in AWS_ENV_TO_CLEAR:
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", str(no_aws_files))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(no_aws_files))
        server = start_moto_server()
        try:
            yield server.endpoint_url
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server of its own, on a free loopback port."""
    binary = need_binary("redis-server")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
