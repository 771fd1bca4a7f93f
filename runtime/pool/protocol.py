"""The worker protocol: length-prefixed binary frames over the worker's
private Unix socket, many requests multiplexed on one connection.

A frame is a header (payload length, request id, kind) and a payload. Token
frames carry raw UTF-8 after a small fixed header, so a streamed token costs
no JSON on either side; requests and final results are JSON. The first frame
on a connection is ``AUTH`` with the worker's secret. Internal: the gateway
owns the OpenAI API."""
from __future__ import annotations

import enum
import json
import struct
from typing import Any

HEADER = struct.Struct("<IIB")  # payload length, request id, kind
TEXT_HEAD = struct.Struct("<HI")  # choice index, completion tokens so far; UTF-8 text follows
MAX_PAYLOAD = 64 * 1024 * 1024


class Kind(enum.IntEnum):
    # gateway -> worker
    AUTH = 0
    GENERATE = 1
    CANCEL = 2
    EMBED = 3
    RANK = 4
    STATS = 5
    # worker -> gateway
    TEXT = 10  # TEXT_HEAD + text
    TEXT_LOGPROBS = 11  # JSON: {"i", "n", "text", "logprobs"}
    CHOICE_DONE = 12  # JSON: {"i", "finish_reason", "completion_tokens"}
    DONE = 13  # JSON: {"prompt_tokens", "cached_tokens"}
    ERROR = 14  # JSON: {"message"}
    RESULT = 15  # JSON: an EMBED, RANK or STATS answer


def frame(kind: Kind, req_id: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(len(payload), req_id, kind) + payload


def json_frame(kind: Kind, req_id: int, body: Any) -> bytes:
    return frame(kind, req_id, json.dumps(body, separators=(",", ":")).encode())


def text_frame(req_id: int, index: int, tokens: int, text: str) -> bytes:
    return frame(Kind.TEXT, req_id, TEXT_HEAD.pack(index, tokens) + text.encode())
