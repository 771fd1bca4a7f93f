"""A real S3 endpoint for tests: moto's server speaking HTTP on loopback.

Tests talk to it over sockets through s3fs and boto3 exactly as they would to
MinIO or AWS; nothing is patched. The server runs in a thread of the test
process, so `moto.core.enable_iam_authentication()` also applies to it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from moto.server import ThreadedMotoServer

# Dummy credentials; moto accepts any unless IAM authentication is enabled.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    # Never consult instance metadata or the developer's own AWS profile.
    "AWS_EC2_METADATA_DISABLED": "true",
}
AWS_ENV_TO_CLEAR = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL",
                    "AWS_ENDPOINT_URL_S3", "LLMFN_S3_ENDPOINT_URL")


@dataclass
class MotoServer:
    server: ThreadedMotoServer
    endpoint_url: str

    def stop(self) -> None:
        self.server.stop()


def start_moto_server(host: str = "127.0.0.1") -> MotoServer:
    """Start moto's S3-compatible server on a free loopback port."""
    # werkzeug logs every request at INFO; that is noise in test output.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
    server.start()
    bound_host, port = server.get_host_and_port()
    return MotoServer(server, f"http://{bound_host}:{port}")
