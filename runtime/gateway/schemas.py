"""The OpenAI-compatible request and response shapes: the single schema.

Handlers validate with these, responses are built from them, and
``GET /openapi.json`` is generated from them. Streamed chunks are the one
exception: they are written as text (``generation.Generation._chunk``), so
that no token pays for a model's validation.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.accounting.keys import check_key_name
from runtime.pool.local import SpareState
from runtime.pool.pool import PoolState, WorkerState
from runtime.pool.sampling import DEFAULT as SAMPLING
from runtime.pool.sampling import PAYLOAD_FIELDS

MAX_INPUTS = 2048  # texts or prompts in one request, as OpenAI's embeddings


class _Request(BaseModel):
    # Clients send vendor extras (metadata, store, service_tier...): accept and ignore them.
    model_config = ConfigDict(extra="ignore")


class StreamOptions(BaseModel):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingParams(_Request):
    """Sampling fields shared by chat and completions; ``top_k``, ``min_p``,
    ``repeat_penalty`` and ``repeat_last_n`` pass through to llama.cpp."""
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(SAMPLING.temperature, ge=0.0, le=2.0)
    top_p: float = Field(SAMPLING.top_p, gt=0.0, le=1.0)
    top_k: int = Field(SAMPLING.top_k, ge=0)
    min_p: float = Field(SAMPLING.min_p, ge=0.0, le=1.0)
    repeat_penalty: float = Field(SAMPLING.repeat_penalty, gt=0.0, le=10.0)
    repeat_last_n: int = Field(SAMPLING.repeat_last_n, ge=-1, le=1 << 20)  # -1: the context
    presence_penalty: float = Field(SAMPLING.presence_penalty, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(SAMPLING.frequency_penalty, ge=-2.0, le=2.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # int64, as OpenAI's; llama.cpp's uint32 too
    logit_bias: dict[int, float] | None = None
    ignore_eos: bool = SAMPLING.ignore_eos  # llama.cpp's extension: generate max_tokens whatever the model says
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops

    def stop_list(self) -> list[str]:
        return list(self.stop or [])

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: dict[int, float] | None) -> dict[int, float] | None:
        if v is None:
            return None
        if len(v) > 1024:
            raise ValueError("at most 1024 logit_bias entries")
        if any(not -100 <= b <= 100 for b in v.values()):
            raise ValueError("logit_bias values must be between -100 and 100")
        return v

    def sampling(self) -> dict[str, Any]:
        """The sampler settings the worker is sent."""
        return {name: getattr(self, name) for name in PAYLOAD_FIELDS}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    # Fields that clients echo back in assistant messages are accepted.
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    reasoning_content: str | None = None
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: dict[str, Any] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.type != "text":
                raise ValueError(f"content part of type '{part.type}' is not supported by this model")
            parts.append(part.text or "")
        return "".join(parts)


class ChatCompletionRequest(SamplingParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _combine(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    def worker_logprobs(self) -> int | None:
        """What the worker reports per token: None, or the number of alternatives."""
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingParams):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(union_mode="left_to_right")
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=16)
    response_format: dict[str, Any] | None = None  # as in chat: llama.cpp serves it here too

    def worker_logprobs(self) -> int | None:
        return self.logprobs

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of is not supported (use n)")
        if self.suffix:
            raise ValueError("suffix (insertion) is not supported by this model")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be empty")
        if len(self.prompts()) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} prompts per request")
        return self

    def prompts(self) -> list[str | list[int]]:
        return _one_or_many(self.prompt)


def _one_or_many(value: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """The OpenAI API's text-or-tokens field: one text, one token list, or a list of either."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [value]  # one input given as token ids
    return list(value)  # type: ignore[arg-type]


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]] = Field(union_mode="left_to_right")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be empty")
        if isinstance(v, list) and len(v) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs per request")
        return v

    def inputs(self) -> list[str | list[int]]:
        return _one_or_many(self.input)


class ScoreRequest(_Request):
    """vLLM-style ``/score``: one text against many, or pairwise lists."""
    model: str = Field(min_length=1)
    text_1: str | list[str]
    text_2: str | list[str]

    @model_validator(mode="after")
    def _pairs(self) -> ScoreRequest:
        a, b = self.pairs_lists()
        if not a or not b:
            raise ValueError("text_1 and text_2 must not be empty")
        if len(a) != 1 and len(a) != len(b):
            raise ValueError("text_1 must be one text or as many texts as text_2")
        if len(b) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} texts per request")
        return self

    def pairs_lists(self) -> tuple[list[str], list[str]]:
        as_list = lambda v: [v] if isinstance(v, str) else list(v)  # noqa: E731
        return as_list(self.text_1), as_list(self.text_2)


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str


class RerankRequest(_Request):
    """Cohere/Jina-compatible rerank."""
    model: str = Field(min_length=1)
    query: str
    documents: list[str | RerankDocument] = Field(min_length=1, max_length=1000)
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = True

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]


_COUNT = Field(None, ge=0, lt=2**63)  # stored in SQLite's 64-bit integers


class KeyCreateRequest(_Request):
    """``POST /admin/keys``: a named key, optionally limited to models and budgets."""
    name: str = Field(min_length=1, max_length=128)
    models: list[str] | None = None
    rpm: int | None = _COUNT
    tpm: int | None = _COUNT
    daily_tokens: int | None = _COUNT
    monthly_tokens: int | None = _COUNT

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return check_key_name(name)  # a safe charset; reserved names refused


# ---- responses -----------------------------------------------------------

class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None

    @classmethod
    def of(cls, prompt: int, completion: int = 0, cached: int = 0) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion,
                   total_tokens=prompt + completion,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached) if cached else None)


FinishReason = Literal["stop", "length", "tool_calls"]


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason | None
    logprobs: ChoiceLogprobs | None = None


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


class ChatCompletion(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ScoreItem(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("score"))
    object: Literal["list"] = "list"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    data: list[ScoreItem]
    usage: Usage


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("rerank"))
    model: str
    results: list[RerankResult]
    usage: Usage
    meta: dict[str, Any] | None = None


class WorkerPlacement(BaseModel):
    """Where one worker runs: a local process, or a Ray actor on a cluster node."""
    state: WorkerState
    backend: Literal["local", "ray"] | None = None  # None: not started yet
    pid: int | None = None  # on its node
    node_ip: str | None = None  # local: this host's name
    node_id: str | None = None  # ray: the Ray node's id
    actor: str | None = None  # ray: the actor's name (namespace llmfn)
    actor_id: str | None = None
    resources: dict[str, float] | None = None  # ray: what the actor holds (CPU, GPU, custom)


class PoolStatus(BaseModel):
    state: PoolState
    workers: dict[str, int]
    queued: int
    in_flight: int
    placement: list[WorkerPlacement] = Field(default_factory=list)  # where each worker runs
    spare: SpareState | None = None  # an interpreter waiting to take the next cold start
    last_cold_start: dict[str, Any] | None = None
    ready: bool = True  # a call to this model would be admitted now (see ``/health/ready``)
    reason: str = ""  # why it is, or is not, ready


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmfn"
    context_length: int
    source: str
    pool: PoolStatus


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
