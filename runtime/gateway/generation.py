"""``/v1/chat/completions`` and ``/v1/completions``: count the prompt with the
model's tokenizer, check it against the context, turn ``response_format`` and
``tools`` into a grammar, lease worker sequences (``n`` choices side by side),
and return the text, tool calls and logprobs whole or as SSE with exact usage."""
from __future__ import annotations

import functools
import json
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from runtime.accounting.status import CallStatus
from runtime.errors import ContextLengthExceeded, InvalidRequest, LlmfnError
from runtime.gateway import schemas as s
from runtime.gateway import tools as t
from runtime.gateway.calls import CallMeter
from runtime.gateway.charging import ACCOUNTING, charge
from runtime.gateway.grammar import response_format_grammar
from runtime.gateway.http_errors import BODY_BYTES, LIMITS, REQUEST_ID, parse_body
from runtime.gateway.sse import EventStream
from runtime.gateway.state import meter_for, pool_for
from runtime.pool import ModelPool
from runtime.pool.client import ChoiceDone, Done, Text
from runtime.pool.tokenizer import ModelTokenizer, offload


@dataclass
class Prompt:
    tokens: list[int]
    text: str = ""  # for echo


@dataclass
class ChoiceState:
    """One choice as it is generated: text, logprobs, tool-call parsing."""
    index: int
    parts: list[str] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    tokens: int = 0
    finish: str | None = None
    tools: t.ToolCallStream | None = None
    echo: str = ""
    streamed: int = 0  # characters of text streamed so far (completions' text_offset)


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


class Generation:
    """One chat or completions request, from validated body to response."""

    def __init__(self, request: web.Request, req: s.SamplingParams, endpoint: str):
        self.request, self.req, self.endpoint = request, req, endpoint
        self.chat = endpoint == "chat"
        self.pool = pool_for(request, req.model)
        self.meter: CallMeter = meter_for(request, self.pool.name, endpoint)
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.headers: dict[str, str] = {}
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.running: dict[int, int] = {}  # tokens of choices still generating
        self.grammar: str | None = None
        self.plan: t.ToolPlan | None = None
        self.logprobs = req.worker_logprobs()  # type: ignore[attr-defined]
        self._chunk_head = (f'{{"id":"{self.id}","object":"'
                            f'{"chat.completion.chunk" if self.chat else "text_completion"}",'
                            f'"created":{self.created},"model":{json.dumps(req.model)},"choices":[')

    @property
    def partial(self) -> int:
        return sum(self.running.values())

    async def respond(self, prompts: list[Prompt], max_tokens: int | None, param: str) -> web.StreamResponse:
        limits = [check_context(self.pool, len(p.tokens), max_tokens, param) for p in prompts]
        self.prompt_tokens = sum(len(p.tokens) for p in prompts)
        # TPM reserves the prompt plus everything the call may generate. The admission row
        # is queued once the worker has the request and written while it reads the prompt;
        # nothing of the response leaves before it is on disk (``_events`` confirms it first).
        async with charge(self.request.app[ACCOUNTING], self.meter,
                          self.prompt_tokens + self.req.n * sum(limits), self.prompt_tokens, wait=False,
                          counted=lambda: (self.prompt_tokens, self.completion_tokens + self.partial)) as spent:
            self.headers = spent.headers
            if self.req.stream:
                return await self._stream(prompts, limits)
            return await self._whole(prompts, limits)

    # ---- running choices -------------------------------------------------------

    def _body(self, prompt: Prompt, max_tokens: int, n: int) -> dict[str, Any]:
        sampling = self.req.sampling()
        if self.grammar:
            sampling["grammar"] = self.grammar
        if self.req.logit_bias:
            sampling["logit_bias"] = {str(k): v for k, v in self.req.logit_bias.items()}
        # A native tool-call format's tags are special tokens: they must reach the parser as text.
        special = bool(self.plan and self.plan.active and self.plan.format is not t.ToolFormat.GENERIC)
        return {"prompt_tokens": prompt.tokens, "max_tokens": max_tokens, "stop": self.req.stop_list(),
                "n": n, "logprobs": self.logprobs, "special": special, "sampling": sampling}

    def _groups(self, prompts: list[Prompt], limits: list[int]):
        """(prompt, limit, first choice index, n): ``n`` choices per prompt, at most a
        worker's slots at a time."""
        slots = self.pool.config.pool.slots
        for i, (prompt, limit) in enumerate(zip(prompts, limits)):
            for k in range(0, self.req.n, slots):
                yield prompt, limit, i * self.req.n + k, min(slots, self.req.n - k)

    def _new_choice(self, index: int, prompt: Prompt) -> ChoiceState:
        c = ChoiceState(index)
        if self.plan is not None and self.plan.active:
            c.tools = t.ToolCallStream(self.plan)
        if not self.chat and getattr(self.req, "echo", False):
            c.echo = prompt.text
        return c

    async def _events(self, prompt: Prompt, limit: int, base: int, n: int):
        """(choice index, event) of one group, accounted as they come."""
        async with self.pool.lease(n) as lease:
            async with aclosing(lease.generate(self._body(prompt, limit, n), self.meter.dispatched)) as events:
                async for ev in events:
                    await self.meter.confirm()  # the admission row is on disk before any output
                    if isinstance(ev, Text):
                        if ev.text:
                            self.meter.first_token()
                        self.running[base + ev.index] = ev.tokens
                        self.meter.progress(self.prompt_tokens, self.completion_tokens + self.partial)
                    elif isinstance(ev, ChoiceDone):
                        self.running.pop(base + ev.index, None)
                        self.completion_tokens += ev.completion_tokens
                    elif isinstance(ev, Done):
                        self.cached_tokens += ev.cached_tokens if base % self.req.n == 0 else 0
                    yield base + getattr(ev, "index", 0), ev

    def _usage(self, running: bool = False) -> s.Usage:
        return s.Usage.of(self.prompt_tokens, self.completion_tokens + (self.partial if running else 0),
                          self.cached_tokens)

    async def _succeeded(self) -> s.Usage:
        """End the call as a success (in the ledger before the response ends); its usage."""
        usage = self._usage()
        await self.meter.finish(CallStatus.SUCCESS, usage.prompt_tokens, usage.completion_tokens, self.cached_tokens)
        return usage

    # ---- whole responses -------------------------------------------------------

    async def _whole(self, prompts: list[Prompt], limits: list[int]) -> web.Response:
        states: dict[int, ChoiceState] = {}
        for prompt, limit, base, n in self._groups(prompts, limits):
            for k in range(n):
                states[base + k] = self._new_choice(base + k, prompt)
            async for index, ev in self._events(prompt, limit, base, n):
                c = states[index]
                if isinstance(ev, Text):
                    c.parts.append(ev.text)
                    if ev.logprobs:
                        c.logprobs.extend(ev.logprobs)
                elif isinstance(ev, ChoiceDone):
                    c.finish, c.tokens = ev.finish_reason, ev.completion_tokens
        choices = [self._choice(states[i]) for i in sorted(states)]
        usage = await self._succeeded()
        cls = s.ChatCompletion if self.chat else s.Completion
        body = cls(id=self.id, created=self.created, model=self.req.model, choices=choices, usage=usage)
        return web.json_response(text=body.model_dump_json(exclude_none=True),
                                 headers={"x-request-id": self.request[REQUEST_ID], **self.headers})

    def _choice(self, c: ChoiceState):
        text = "".join(c.parts)
        finish = c.finish if c.finish in ("stop", "length") else "stop"
        if not self.chat:
            return s.CompletionChoice(index=c.index, text=c.echo + text, finish_reason=finish,
                                      logprobs=self._completion_logprobs(c.logprobs, len(c.echo)))
        content, calls = text, None
        if c.tools is not None:
            parsed = t.parse_tool_calls(text, self.plan)
            content = parsed.content
            if parsed.tool_calls:
                calls = [s.ToolCall.model_validate(tc) for tc in parsed.tool_calls]
                finish = "tool_calls" if finish == "stop" else finish  # cut short: "length", as OpenAI
        lp = s.ChoiceLogprobs(content=c.logprobs) if self.logprobs is not None else None
        return s.ChatChoice(index=c.index, message=s.AssistantMessage(content=content, tool_calls=calls),
                            finish_reason=finish, logprobs=lp)

    @staticmethod
    def _completion_logprobs(entries: list[dict], offset: int) -> s.CompletionLogprobs | None:
        if not entries and offset == 0:
            return None
        offsets, pos = [], offset
        for e in entries:
            offsets.append(pos)
            pos += len(e["token"])
        return s.CompletionLogprobs(
            tokens=[e["token"] for e in entries], token_logprobs=[e["logprob"] for e in entries],
            top_logprobs=[{x["token"]: x["logprob"] for x in e["top_logprobs"]} for e in entries],
            text_offset=offsets)

    # ---- streams ---------------------------------------------------------------

    async def _stream(self, prompts: list[Prompt], limits: list[int]) -> web.StreamResponse:
        opts = self.req.stream_options or s.StreamOptions()
        out = EventStream(self.request, self.headers)
        try:
            for prompt, limit, base, n in self._groups(prompts, limits):
                states = {base + k: self._new_choice(base + k, prompt) for k in range(n)}
                for c in states.values():  # they leave with the first token, once the call is on disk
                    if self.chat:
                        out.hold_raw(self._chunk(c.index, {"role": "assistant", "content": ""}, opts))
                    elif c.echo:
                        out.hold_raw(self._chunk(c.index, c.echo, opts))
                async for index, ev in self._events(prompt, limit, base, n):
                    for chunk in self._stream_event(states[index], ev, opts):
                        if isinstance(ev, Text):
                            await out.send_raw(chunk)
                        else:  # a choice's end: leaves with what follows it
                            out.hold_raw(chunk)
            usage = await self._succeeded()
        except LlmfnError as err:
            if not out.started:
                raise
            await self.meter.finish(CallStatus.ERROR, self.prompt_tokens,
                                    self.completion_tokens + self.partial, error=err.code)
            return await out.fail(err.body())
        if opts.include_usage or opts.continuous_usage_stats:
            out.hold_raw(self._chunk_head + '],"usage":' + usage.model_dump_json(exclude_none=True) + "}")
        return await out.done()

    def _stream_event(self, c: ChoiceState, ev, opts: s.StreamOptions):
        if isinstance(ev, Text):
            lp = self._stream_logprobs(c, ev.logprobs)
            c.streamed += len(ev.text)
            if c.tools is None:
                if ev.text or lp is not None:
                    yield self._chunk(c.index, ev.text if not self.chat else {"content": ev.text}, opts, lp)
                return
            for delta in c.tools.feed(ev.text):
                yield self._chunk(c.index, _delta(delta), opts)
            if lp is not None:
                yield self._chunk(c.index, {}, opts, lp)
        elif isinstance(ev, ChoiceDone):
            finish = ev.finish_reason if ev.finish_reason in ("stop", "length") else "stop"
            if c.tools is not None:
                for delta in c.tools.finish():
                    yield self._chunk(c.index, _delta(delta), opts)
                if c.tools.has_tool_calls and finish == "stop":
                    finish = "tool_calls"
            yield self._chunk(c.index, {} if self.chat else "", opts, finish=finish)

    def _stream_logprobs(self, c: ChoiceState, entries: list[dict] | None):
        if self.logprobs is None or entries is None:
            return None
        if self.chat:
            return {"content": entries}
        lp = self._completion_logprobs(entries, len(c.echo) + c.streamed)
        return lp.model_dump() if lp else None

    def _chunk(self, index: int, delta: dict | str, opts: s.StreamOptions, logprobs=None,
               finish: str | None = None) -> str:
        """One SSE chunk, built as text: no model validation per streamed token."""
        key = '"delta":' if self.chat else '"text":'
        choice = (f'{{"index":{index},{key}{json.dumps(delta, separators=(",", ":"))},'
                  f'"logprobs":{json.dumps(logprobs) if logprobs is not None else "null"},'
                  f'"finish_reason":{json.dumps(finish)}}}')
        tail = "]}"
        if opts.continuous_usage_stats:
            tail = '],"usage":' + self._usage(running=True).model_dump_json(exclude_none=True) + "}"
        return self._chunk_head + choice + tail


def _delta(d: t.Delta) -> dict:
    if d.tool_call is not None:
        return {"tool_calls": [d.tool_call]}
    return {"content": d.content}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    req = await parse_body(request, s.ChatCompletionRequest)
    gen = Generation(request, req, "chat")
    tokenizer = await gen.pool.ensure_tokenizer()
    # Tools, grammar and the template together: one hop, off the loop for a large body.
    tokens = await offload(functools.partial(_chat_prompt, gen, req, tokenizer), request[BODY_BYTES])
    return await gen.respond([Prompt(tokens)], req.max_tokens, "messages")


def _chat_prompt(gen: Generation, req: s.ChatCompletionRequest, tokenizer: ModelTokenizer) -> list[int]:
    """The prompt tokens of a chat; sets the generation's grammar and tool plan."""
    try:
        messages = [{**m.model_dump(exclude_none=True), "content": m.text()} for m in req.messages]
    except ValueError as exc:  # unsupported content part
        raise InvalidRequest(str(exc), param="messages") from None
    gen.grammar = response_format_grammar(req.response_format)
    template_tools = None
    if req.tools:
        limits = gen.request.app[LIMITS]
        gen.plan = t.plan_tools(req.tools, req.tool_choice, req.parallel_tool_calls, messages,
                                t.detect_format(tokenizer.chat_template),
                                max_tools=limits.max_tools, max_chars=limits.max_tools_bytes)
        messages, template_tools = gen.plan.messages, gen.plan.tools_for_template
        if gen.plan.grammar:
            if gen.grammar:
                raise InvalidRequest("response_format cannot be combined with tools that constrain the "
                                     "output; use tool_choice 'none' or drop response_format",
                                     param="response_format")
            gen.grammar = gen.plan.grammar
    if req.logit_bias:
        tokenizer.check_ids(list(req.logit_bias), "logit_bias")
    try:
        return tokenizer.render_chat(messages, template_tools, max_tokens=gen.pool.config.pool.n_ctx)
    except ValueError as exc:  # the template refused the roles
        raise InvalidRequest(str(exc), param="messages") from None


async def completions(request: web.Request) -> web.StreamResponse:
    req = await parse_body(request, s.CompletionRequest)
    gen = Generation(request, req, "completions")
    tokenizer = await gen.pool.ensure_tokenizer()
    gen.grammar = response_format_grammar(req.response_format)
    prompts = await offload(functools.partial(_completion_prompts, req, tokenizer, gen.pool.config.pool.n_ctx),
                            request[BODY_BYTES])
    return await gen.respond(prompts, req.max_tokens, "prompt")


def _completion_prompts(req: s.CompletionRequest, tokenizer: ModelTokenizer, n_ctx: int) -> list[Prompt]:
    """Each prompt's tokens (token-id prompts checked against the vocabulary) and text for echo."""
    if req.logit_bias:
        tokenizer.check_ids(list(req.logit_bias), "logit_bias")
    prompts = []
    for p in req.prompts():
        if isinstance(p, str):
            tokenizer.check_fits(p, n_ctx, "prompt")
            prompts.append(Prompt(tokenizer.encode(p, add_bos=True, special=True), p))
        else:
            tokenizer.check_ids(list(p), "prompt")
            prompts.append(Prompt(list(p), tokenizer.decode(list(p)) if req.echo else ""))
    if any(not p.tokens for p in prompts):
        raise InvalidRequest("prompt must not be empty", param="prompt")
    return prompts
