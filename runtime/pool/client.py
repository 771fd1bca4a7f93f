"""The gateway's side of the worker protocol: one persistent, authenticated
connection per worker (its Unix socket, or a Ray actor's TCP port), requests
multiplexed on it, frames routed to each request's queue by a single reader
task."""
from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from runtime.pool.protocol import HEADER, MAX_PAYLOAD, TEXT_HEAD, Kind, frame, json_frame


class ConnectionLost(Exception):
    """The worker's connection broke (the process died or closed it)."""


class WorkerRefused(Exception):
    """The worker answered a request with an error of its own."""


@dataclass(slots=True)
class Text:
    index: int
    text: str
    tokens: int  # completion tokens of this choice so far
    logprobs: list[dict] | None = None


@dataclass(slots=True)
class ChoiceDone:
    index: int
    finish_reason: str
    completion_tokens: int


@dataclass(slots=True)
class Done:
    prompt_tokens: int
    cached_tokens: int


Event = Text | ChoiceDone | Done


class WorkerClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self._reader, self._writer = reader, writer
        self._queues: dict[int, asyncio.Queue] = {}
        self._ids = itertools.count(1)
        self._lost: BaseException | None = None
        self._task = asyncio.create_task(self._read_loop(), name="worker-client")

    @classmethod
    async def connect(cls, path: str, secret: str) -> WorkerClient:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_PAYLOAD)
        writer.write(frame(Kind.AUTH, 0, secret.encode()))
        return cls(reader, writer)

    @classmethod
    async def connect_tcp(cls, host: str, port: int, secret: str) -> WorkerClient:
        """A worker on another node (a Ray actor): the same protocol on its TCP port, AUTH first."""
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_PAYLOAD)
        writer.write(frame(Kind.AUTH, 0, secret.encode()))
        return cls(reader, writer)

    async def generate(self, body: dict[str, Any], on_sent: Callable[[], None] | None = None
                       ) -> AsyncIterator[Event]:
        """Events of one generation; leaving early cancels it in the worker at once.
        ``on_sent`` runs once the request is on its way, before any event."""
        req_id, q = self._open()
        finished = False
        try:
            self._send(json_frame(Kind.GENERATE, req_id, body))
            if on_sent is not None:
                on_sent()
            while True:
                kind, payload = await self._next(q)
                if kind == Kind.TEXT:
                    index, tokens = TEXT_HEAD.unpack_from(payload)
                    yield Text(index, payload[TEXT_HEAD.size:].decode(), tokens)
                elif kind == Kind.TEXT_LOGPROBS:
                    d = json.loads(payload)
                    yield Text(d["i"], d["text"], d["n"], d["logprobs"])
                elif kind == Kind.CHOICE_DONE:
                    d = json.loads(payload)
                    yield ChoiceDone(d["i"], d["finish_reason"], d["completion_tokens"])
                elif kind == Kind.DONE:
                    d = json.loads(payload)
                    finished = True
                    yield Done(d["prompt_tokens"], d["cached_tokens"])
                    return
        finally:
            self._queues.pop(req_id, None)
            if not finished and self._lost is None:
                self._send(frame(Kind.CANCEL, req_id))

    async def call(self, kind: Kind, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request, one JSON answer (embeddings, rerank, stats)."""
        req_id, q = self._open()
        try:
            self._send(json_frame(kind, req_id, body or {}))
            _, payload = await self._next(q)
            return json.loads(payload)
        finally:
            self._queues.pop(req_id, None)

    @property
    def closed(self) -> bool:
        return self._lost is not None

    async def close(self) -> None:
        self._task.cancel()
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    def _open(self) -> tuple[int, asyncio.Queue]:
        if self._lost is not None:
            raise ConnectionLost(str(self._lost))
        req_id = next(self._ids) & 0xFFFFFFFF
        q: asyncio.Queue = asyncio.Queue()
        self._queues[req_id] = q
        return req_id, q

    def _send(self, data: bytes) -> None:
        if self._lost is not None:
            raise ConnectionLost(str(self._lost))
        self._writer.write(data)

    async def _next(self, q: asyncio.Queue) -> tuple[int, bytes]:
        kind, payload = await q.get()
        if kind is None:
            raise ConnectionLost(payload)
        if kind == Kind.ERROR:
            raise WorkerRefused(json.loads(payload)["message"])
        return kind, payload

    async def _read_loop(self) -> None:
        # Whatever the socket has is parsed at once: a worker's step sends a frame per
        # running sequence, and one read hands them all to their requests.
        read, buf, head = self._reader.read, bytearray(), HEADER.size
        try:
            while True:
                data = await read(1 << 18)
                if not data:
                    raise asyncio.IncompleteReadError(bytes(buf), None)
                buf += data
                start, end = 0, len(buf)
                while end - start >= head:
                    length, req_id, kind = HEADER.unpack_from(buf, start)
                    if length > MAX_PAYLOAD:
                        raise ConnectionError("frame too large")
                    if end - start - head < length:
                        break
                    q = self._queues.get(req_id)
                    if q is not None:
                        q.put_nowait((kind, bytes(buf[start + head:start + head + length])))
                    start += head + length
                del buf[:start]
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self._lost = exc
        except asyncio.CancelledError:
            self._lost = ConnectionLost("closed")
            raise
        finally:
            for q in self._queues.values():
                q.put_nowait((None, f"worker connection lost ({type(self._lost).__name__})"))
