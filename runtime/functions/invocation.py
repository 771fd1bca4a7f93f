"""One invocation in flight: its event, deadline, token, and how it ended."""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class OutcomeKind(StrEnum):
    RESPONSE = "response"  # a whole body
    STREAM = "stream"  # chunks as the handler writes them
    ERROR = "error"  # the handler raised or the instance failed


@dataclass
class Outcome:
    """How the instance answered: a whole body, a stream, or an error."""
    kind: OutcomeKind
    body: bytes = b""
    content_type: str = "application/json"
    chunks: asyncio.Queue | None = None  # stream: bytes ..., then None

    async def stream(self) -> AsyncIterator[bytes]:
        if self.chunks is None:
            if self.body:
                yield self.body
            return
        while (chunk := await self.chunks.get()) is not None:
            yield chunk

    def error(self) -> dict[str, Any]:
        try:
            return json.loads(self.body)
        except ValueError:
            return {"errorMessage": self.body.decode(errors="replace"), "errorType": "Runtime.Unknown"}


@dataclass
class Invocation:
    function: str
    event: bytes
    timeout: float
    token: str = ""
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_context: str | None = None
    started: float = field(default_factory=time.monotonic)
    deadline_ms: int = 0
    outcome: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    finished: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    failure: dict[str, Any] | None = None
    version: int = 1
    logs: list[str] = field(default_factory=list)  # this invocation's lines, for LogType: Tail

    def __post_init__(self) -> None:
        self.deadline_ms = int((time.time() + self.timeout) * 1000)

    def begin(self) -> None:
        """The instance picked it up: Duration and the deadline count from here."""
        self.started = time.monotonic()
        self.deadline_ms = int((time.time() + self.timeout) * 1000)

    def answer(self, outcome: Outcome) -> None:
        if not self.outcome.done():
            self.outcome.set_result(outcome)

    def finish(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def fail(self, error_type: str, message: str) -> None:
        """The runtime's own failure (timeout, crash): an error outcome, and done."""
        self.failure = {"errorMessage": message, "errorType": error_type}
        if not self.outcome.done():
            self.outcome.set_result(Outcome(OutcomeKind.ERROR, json.dumps(self.failure).encode()))
        elif self.outcome.result().chunks is not None:
            self.outcome.result().chunks.put_nowait(None)  # end a stream cut short
        self.finish()
