"""Server-sent events, OpenAI style: ``data: {json}\\n\\n`` chunks, ``data: [DONE]`` last."""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from runtime.gateway.errors import REQUEST_ID
from pydantic import BaseModel


class EventStream:
    def __init__(self, request: web.Request, headers: dict[str, str] | None = None):
        self.request = request
        self.headers = headers or {}
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.response is not None

    async def send(self, chunk: BaseModel | dict[str, Any]) -> None:
        data = chunk.model_dump_json(exclude_none=True) if isinstance(chunk, BaseModel) else json.dumps(chunk)
        await self.send_raw(data)

    async def send_raw(self, data: str) -> None:
        """One event whose JSON is already serialized."""
        if self.response is None:
            self.response = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "x-request-id": self.request.get(REQUEST_ID, ""), **self.headers})
            await self.response.prepare(self.request)
        await self.response.write(b"data: " + data.encode() + b"\n\n")

    async def done(self) -> web.StreamResponse:
        assert self.response is not None
        await self.response.write(b"data: [DONE]\n\n")
        await self.response.write_eof()
        return self.response

    async def fail(self, body: dict[str, Any]) -> web.StreamResponse:
        """An error after the stream started: one error event, and no [DONE]."""
        assert self.response is not None
        await self.response.write(b"data: " + json.dumps(body).encode() + b"\n\n")
        await self.response.write_eof()
        return self.response
