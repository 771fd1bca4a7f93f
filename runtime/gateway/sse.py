"""Server-sent events, OpenAI style: ``data: {json}\\n\\n`` chunks, ``data: [DONE]`` last."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from runtime.gateway.http_errors import REQUEST_ID


class EventStream:
    def __init__(self, request: web.Request, headers: dict[str, str] | None = None):
        self.request = request
        self.headers = headers or {}
        self.response: web.StreamResponse | None = None
        self._held: list[bytes] = []  # events that go out with the next write (one send, not one each)

    @property
    def started(self) -> bool:
        return self.response is not None

    async def send(self, chunk: BaseModel | dict[str, Any]) -> None:
        data = chunk.model_dump_json(exclude_none=True) if isinstance(chunk, BaseModel) else json.dumps(chunk)
        await self.send_raw(data)

    async def send_raw(self, data: str) -> None:
        """One event whose JSON is already serialized."""
        await self._prepare()
        await self.response.write(self._take(b"data: " + data.encode() + b"\n\n"))

    def hold_raw(self, data: str) -> None:
        """An event that can wait for the next one (a choice's last chunk before the usage
        and ``[DONE]``): they leave in one write."""
        self._held.append(b"data: " + data.encode() + b"\n\n")

    async def done(self) -> web.StreamResponse:
        await self._prepare()
        await self.response.write_eof(self._take(b"data: [DONE]\n\n"))  # with the stream's end
        return self.response

    async def _prepare(self) -> None:
        if self.response is None:
            self.response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "x-request-id": self.request.get(REQUEST_ID, ""), **self.headers})
            await self.response.prepare(self.request)

    def _take(self, data: bytes) -> bytes:
        if not self._held:
            return data
        self._held.append(data)
        data, self._held = b"".join(self._held), []
        return data

    async def fail(self, body: dict[str, Any]) -> web.StreamResponse:
        """An error after the stream started: one error event, and no [DONE]."""
        assert self.response is not None
        await self.response.write_eof(self._take(b"data: " + json.dumps(body).encode() + b"\n\n"))
        return self.response
