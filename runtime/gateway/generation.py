"""``/v1/chat/completions`` and ``/v1/completions``: count the prompt with the
model's tokenizer, check it against the context, lease a worker slot, and
return the text whole or as SSE with exact usage."""
from __future__ import annotations

import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from aiohttp import web

from runtime.gateway.errors import REQUEST_ID

from runtime.errors import ContextLengthExceeded, InvalidRequest, LlmfnError
from runtime.gateway import schemas as s
from runtime.gateway.errors import parse_body
from runtime.gateway.calls import CallMeter
from runtime.gateway.sse import EventStream
from runtime.gateway.accounting import ACCOUNTING
from runtime.gateway.state import meter_for, pool_for
from runtime.pool import ModelPool


@dataclass
class Prompt:
    tokens: list[int]
    text: str = ""  # for echo


@dataclass
class Totals:
    prompt: int = 0
    completion: int = 0
    cached: int = 0
    finish: list[str | None] = field(default_factory=list)

    def usage(self) -> s.Usage:
        return s.Usage.of(self.prompt, self.completion, self.cached)


def check_context(pool: ModelPool, prompt_tokens: int, max_tokens: int | None, param: str) -> int:
    """The max tokens to generate; over the context is a 400 naming both numbers."""
    n_ctx = pool.config.pool.n_ctx
    if max_tokens is None:
        if prompt_tokens >= n_ctx:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {n_ctx} tokens. However, your prompt "
                f"is {prompt_tokens} tokens. Please reduce the length of the {param}.", param=param)
        return n_ctx - prompt_tokens
    if prompt_tokens + max_tokens > n_ctx:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {n_ctx} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the {param}, {max_tokens} in "
            f"the completion). Please reduce the length of the {param} or completion.", param=param)
    return max_tokens


def worker_payload(req: s.SamplingParams, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "max_tokens": max_tokens, "stop": req.stop_list(), **req.sampling()}


async def run_choice(pool: ModelPool, payload: dict[str, Any], meter: CallMeter) -> AsyncIterator[dict]:
    """Items of one generation from a leased slot: text pieces, then the final counts."""
    async with pool.lease() as lease:
        async for item in lease.generate(payload):
            if item.get("text"):
                meter.first_token()
            yield item


async def _collect(pool: ModelPool, payload: dict[str, Any], meter: CallMeter) -> tuple[str, dict]:
    parts: list[str] = []
    async with aclosing(run_choice(pool, payload, meter)) as items:
        async for item in items:
            if item.get("done"):
                return "".join(parts), item
            parts.append(item["text"])
    raise AssertionError("unreachable: run_choice ends with a done item")


def _finish(item: dict) -> str:
    return "stop" if item["finish_reason"] == "stop" else "length"


class Generation:
    """One chat or completions request, from validated body to response."""

    def __init__(self, request: web.Request, req: s.SamplingParams, endpoint: str):
        self.request, self.req, self.endpoint = request, req, endpoint
        self.pool = pool_for(request, req.model)
        self.meter = meter_for(request, self.pool.name, endpoint)
        self.totals = Totals()
        self.id = f"{'chatcmpl' if endpoint == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.grant = None
        self.headers: dict[str, str] = {}

    async def respond(self, prompts: list[Prompt], max_tokens: int | None, param: str) -> web.StreamResponse:
        limits = [check_context(self.pool, len(p.tokens), max_tokens, param) for p in prompts]
        prompt_tokens = sum(len(p.tokens) for p in prompts)
        # TPM reserves the prompt plus everything the call may generate.
        acct = self.request.app[ACCOUNTING]
        self.grant = await acct.reserve(self.meter.principal, self.pool.name,
                                        prompt_tokens + self.req.n * sum(limits))
        self.headers = self.grant.headers() if self.grant else {}
        self.totals.prompt = prompt_tokens
        jobs = [(i * self.req.n + k, p, lim) for i, (p, lim) in enumerate(zip(prompts, limits))
                for k in range(self.req.n)]
        try:
            if self.req.stream:
                return await self._stream(jobs)
            return await self._whole(jobs)
        except LlmfnError as err:
            self.meter.done(f"error:{err.code}", self.totals.prompt, self.totals.completion)
            raise
        except BaseException:
            # Client went away (cancelled) or a bug: still count what was generated.
            self.meter.done("cancelled", self.totals.prompt, self.totals.completion + self._partial)
            raise
        finally:
            await acct.settle(self.grant, self.totals.prompt + self.totals.completion + self._partial)

    def _account(self, item: dict, first_of_prompt: bool) -> None:
        self.totals.completion += item["completion_tokens"]
        if first_of_prompt:
            self.totals.cached += item["cached_tokens"]

    async def _whole(self, jobs) -> web.Response:
        choices = []
        for index, prompt, limit in jobs:
            text, item = await _collect(self.pool, worker_payload(self.req, prompt.tokens, limit), self.meter)
            self._account(item, index % self.req.n == 0)
            choices.append(self._choice(index, prompt, text, _finish(item)))
        usage = self.totals.usage()
        self.meter.done("success", usage.prompt_tokens, usage.completion_tokens, self.totals.cached)
        return web.json_response(text=self._whole_body(choices, usage).model_dump_json(exclude_none=True),
                                 headers={"x-request-id": self.request[REQUEST_ID], **self.headers})

    async def _stream(self, jobs) -> web.StreamResponse:
        opts = self.req.stream_options or s.StreamOptions()
        out = EventStream(self.request, self.headers)
        try:
            for index, prompt, limit in jobs:
                payload = worker_payload(self.req, prompt.tokens, limit)
                if self.endpoint == "chat":
                    await out.send(self._chunk(index, role=True, usage=self._running(opts)))
                elif self.req.echo and prompt.text:  # type: ignore[attr-defined]
                    await out.send(self._chunk(index, text=prompt.text, usage=self._running(opts)))
                # aclosing: a client that goes away frees the slot (and stops the worker) at once
                async with aclosing(run_choice(self.pool, payload, self.meter)) as items:
                    async for item in items:
                        await out.send(self._stream_item(index, item, opts))
        except LlmfnError as err:
            if not out.started:
                raise
            self.meter.done(f"error:{err.code}", self.totals.prompt, self.totals.completion + self._partial)
            return await out.fail(err.body())
        usage = self.totals.usage()
        self.meter.done("success", usage.prompt_tokens, usage.completion_tokens, self.totals.cached)
        if opts.include_usage or opts.continuous_usage_stats:
            await out.send(self._usage_chunk(usage))
        return await out.done()

    _partial = 0

    def _stream_item(self, index: int, item: dict, opts: s.StreamOptions) -> dict:
        if item.get("done"):
            self._account(item, index % self.req.n == 0)
            self._partial = 0
            return self._chunk(index, finish=_finish(item), usage=self._running(opts))
        self._partial = item["tokens"]
        return self._chunk(index, text=item["text"], usage=self._running(opts))

    def _running(self, opts: s.StreamOptions) -> s.Usage | None:
        if not opts.continuous_usage_stats:
            return None
        return s.Usage.of(self.totals.prompt, self.totals.completion + self._partial, self.totals.cached)

    # ---- shapes --------------------------------------------------------------

    def _choice(self, index: int, prompt: Prompt, text: str, finish: str):
        if self.endpoint == "chat":
            return s.ChatChoice(index=index, message=s.AssistantMessage(content=text), finish_reason=finish)
        echo = prompt.text if getattr(self.req, "echo", False) else ""
        return s.CompletionChoice(index=index, text=echo + text, finish_reason=finish)

    def _whole_body(self, choices, usage: s.Usage):
        if self.endpoint == "chat":
            return s.ChatCompletion(id=self.id, created=self.created, model=self.req.model,
                                    choices=choices, usage=usage)
        return s.Completion(id=self.id, created=self.created, model=self.req.model,
                            choices=choices, usage=usage)

    def _chunk(self, index: int, *, text: str | None = None, role: bool = False,
               finish: str | None = None, usage: s.Usage | None = None) -> dict:
        if self.endpoint == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta = {"role": "assistant", "content": ""}
            elif text is not None:
                delta = {"content": text}
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                    "model": self.req.model, "choices": [choice]}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
            body = {"id": self.id, "object": "text_completion", "created": self.created,
                    "model": self.req.model, "choices": [choice]}
        if usage is not None:
            body["usage"] = usage.model_dump(exclude_none=True)
        return body

    def _usage_chunk(self, usage: s.Usage) -> dict:
        obj = "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.req.model,
                "choices": [], "usage": usage.model_dump(exclude_none=True)}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await parse_body(request, s.ChatCompletionRequest)
    gen = Generation(request, req, "chat")
    tokenizer = await gen.pool.ensure_tokenizer()
    try:
        messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in req.messages]
        tokens = await tokenizer.arender_chat(messages, req.tools)
    except ValueError as exc:  # unsupported content part, or the template refused the roles
        raise InvalidRequest(str(exc), param="messages") from None
    return await gen.respond([Prompt(tokens)], req.max_tokens, "messages")


async def completions(request: web.Request) -> web.StreamResponse:
    req = await parse_body(request, s.CompletionRequest)
    gen = Generation(request, req, "completions")
    tokenizer = await gen.pool.ensure_tokenizer()
    prompts = []
    for p in req.prompts():
        if isinstance(p, str):
            prompts.append(Prompt(await tokenizer.aencode(p, add_bos=True, special=True), p))
        else:
            prompts.append(Prompt(list(p), tokenizer.decode(list(p)) if req.echo else ""))
    if any(not p.tokens for p in prompts):
        raise InvalidRequest("prompt must not be empty", param="prompt")
    return await gen.respond(prompts, req.max_tokens, "prompt")
