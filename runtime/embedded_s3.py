"""The embedded S3: moto's server on loopback, for ``llmfn serve`` when no S3
endpoint is configured. It owns starting and stopping that server, its endpoint
URL and the credentials that go with it. moto is an optional dependency
(``pip install 'llmfn[embedded-s3]'``); this module imports it only on start."""
from __future__ import annotations

import logging
import os
from typing import Any

INSTALL_HINT = "pip install 'llmfn[embedded-s3]'"
# moto's server accepts any credentials; functions and triggers use these with it.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "llmfn", "AWS_SECRET_ACCESS_KEY": "llmfn-embedded",
               "AWS_DEFAULT_REGION": "us-east-1"}


class EmbeddedS3Unavailable(RuntimeError):
    """moto is not installed; the message says what to install or configure instead."""


class EmbeddedS3:
    """``start()`` → ``endpoint_url`` (``http://127.0.0.1:<port>``) → ``stop()``."""

    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self.endpoint_url: str | None = None
        self._server: Any = None

    def start(self) -> str:
        """Start the server on a free loopback port and return its endpoint URL.
        Sets ``CREDENTIALS`` in this process's environment where none are set, so
        that its own S3 clients (models, triggers, deployments) can sign requests."""
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:
            raise EmbeddedS3Unavailable(
                f"the embedded S3 needs moto: {INSTALL_HINT}, or point llmfn at an S3 endpoint "
                "(--s3-endpoint-url or LLMFN_S3_ENDPOINT_URL)") from exc
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
        for key, value in CREDENTIALS.items():
            os.environ.setdefault(key, value)
        self._server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self.endpoint_url

    def function_environment(self) -> dict[str, str]:
        """What a function needs to reach this S3: the endpoint and its credentials
        (never the service's own; the embedded S3 takes any)."""
        assert self.endpoint_url is not None, "start() first"
        return {"AWS_ENDPOINT_URL_S3": self.endpoint_url, **CREDENTIALS}

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
