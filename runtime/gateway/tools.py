"""OpenAI tool calls (``tools``, ``tool_choice``, ``parallel_tool_calls``) on llama.cpp models.

Before dispatch, ``plan_tools`` validates the request's tools, prepares the
messages for the chat template and, where the model must call a tool, builds
the GBNF grammar that makes it; after (or during) generation,
``parse_tool_calls`` / ``ToolCallStream`` turn the model's text back into
OpenAI ``tool_calls``. It never renders a prompt or runs a model.

The output format follows the model's chat template (``detect_format``):

- ``HERMES`` (Hermes 2 Pro, Qwen 2.5, Qwen 3): content, then one or more
  ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` blocks.
- ``LLAMA3`` (Llama 3.1 / 3.2 / 3.3): the whole answer is one
  ``{"name": ..., "parameters": {...}}`` object, ``<|python_tag|>`` optional.
  The templates render one call per assistant message, so forced calls are
  single and earlier parallel calls are split into consecutive messages.
- ``GENERIC``, for models whose template has no (or an unknown) tool format,
  and base models with no template at all. A system message added in front
  lists the tools (one JSON object per line) and asks for exactly one JSON
  object as the answer, either::

      {"tool_calls": [{"name": "<tool>", "arguments": {...}}, ...]}
      {"response": "<text for the user>"}

  Earlier assistant turns are shown in the same JSON, tool results as text
  messages of role ``tool``. Whenever tools are in play the grammar is on
  (with ``auto`` it allows both shapes, with ``required`` or a named function
  only ``tool_calls``), so even a tiny model's answer parses. The text of
  ``response`` is the message content, streamed as it is decoded.

Arguments are the model's JSON text as written (what OpenAI returns too);
they stream in fragments as the model writes them, once the call's name is
known. In ``auto`` mode text that does not parse as a call of a declared tool
stays content; nothing here raises on model output.
"""
from __future__ import annotations

import enum
import functools
import json
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from runtime.errors import InvalidRequest
from runtime.gateway.grammar import check_schema, schema_grammar

__all__ = [
    "MAX_TOOLS",
    "MAX_TOOLS_CHARS",
    "Delta",
    "ParsedOutput",
    "ToolCallStream",
    "ToolFormat",
    "ToolPlan",
    "detect_format",
    "parse_tool_calls",
    "plan_tools",
]

# Defaults; the gateway's InputLimits (settings) decide.
MAX_TOOLS = 128
MAX_TOOLS_CHARS = 256 * 1024  # all tool definitions together, as JSON

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ID_CHARS = string.ascii_letters + string.digits


class ToolFormat(str, enum.Enum):
    HERMES = "hermes"
    LLAMA3 = "llama3"
    GENERIC = "generic"


# Templates whose calls carry XML arguments (Qwen3-Coder, GLM, MiniMax ...) look
# like Hermes at first sight; they are not JSON calls.
_XML_ARGUMENTS = ("<function=", "<parameter=", "<arg_key>", "<invoke ")
_HERMES_CALL = re.compile(r'<tool_call>.{0,80}?\\?"name\\?"', re.DOTALL)


@functools.lru_cache(maxsize=32)
def detect_format(chat_template: str | None) -> ToolFormat:
    """The tool-call format a chat template teaches its model."""
    if not chat_template or any(marker in chat_template for marker in _XML_ARGUMENTS):
        return ToolFormat.GENERIC
    if _HERMES_CALL.search(chat_template):
        return ToolFormat.HERMES
    if "<|start_header_id|>" in chat_template and '"parameters"' in chat_template:
        return ToolFormat.LLAMA3
    return ToolFormat.GENERIC


@dataclass(frozen=True)
class _Tool:
    index: int  # in the request's ``tools``
    name: str
    description: str | None
    parameters: dict

    @property
    def param(self) -> str:
        return f"tools[{self.index}].function.parameters"

    def for_template(self) -> dict:
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


@dataclass(frozen=True)
class ToolPlan:
    format: ToolFormat
    grammar: str | None  # GBNF (root "root") when the model must call a tool, or in GENERIC mode
    messages: list[dict]  # what the chat template renders
    tools_for_template: list[dict] | None  # the template's ``tools``; None in GENERIC mode
    active: bool  # tools in play: some declared and tool_choice is not "none"
    tool_names: frozenset[str] = frozenset()  # declared tools: no other name counts as a call
    parallel: bool = True  # more than one call per answer


@dataclass(frozen=True)
class Delta:
    """One streaming step: content text, or a tool-call delta in OpenAI's streaming shape."""
    content: str | None = None
    tool_call: dict | None = None


@dataclass
class ParsedOutput:
    """The assistant message: content (None when there are calls and no text) and OpenAI tool_calls."""
    content: str | None
    tool_calls: list[dict] = field(default_factory=list)


# -- the plan -------------------------------------------------------------------

def plan_tools(tools: list[dict] | None, tool_choice: str | dict | None,
               parallel_tool_calls: bool | None, messages: list[dict], fmt: ToolFormat, *,
               max_tools: int = MAX_TOOLS, max_chars: int = MAX_TOOLS_CHARS) -> ToolPlan:
    """Validate the tool fields of a chat request and prepare its generation."""
    declared = _parse_tools(tools, max_tools, max_chars)
    choice, named = _parse_tool_choice(tool_choice, declared)
    active = bool(declared) and choice != "none"
    parallel = parallel_tool_calls is not False and named is None and fmt is not ToolFormat.LLAMA3
    allowed = [t for t in declared if named in (None, t.name)]
    grammar = None
    if active and (choice != "auto" or fmt is ToolFormat.GENERIC):
        grammar = _grammar(fmt, allowed, choice == "auto", parallel)
    return ToolPlan(
        format=fmt, grammar=grammar,
        messages=_MESSAGES[fmt](messages, declared if active else [], choice, named, parallel),
        tools_for_template=[t.for_template() for t in declared] if active and fmt is not ToolFormat.GENERIC
        else None,
        active=active, tool_names=frozenset(t.name for t in declared), parallel=parallel)


def _parse_tools(tools: Any, max_tools: int, max_chars: int) -> list[_Tool]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("tools must be an array", param="tools")
    if len(tools) > max_tools:
        raise InvalidRequest(f"tools: at most {max_tools} tools are supported", param="tools")
    if len(json.dumps(tools)) > max_chars:
        raise InvalidRequest(f"tools: the tool definitions exceed {max_chars} characters", param="tools")
    parsed = [_parse_tool(tool, i) for i, tool in enumerate(tools)]
    names = [t.name for t in parsed]
    for name in names:
        if names.count(name) > 1:
            raise InvalidRequest(f"tools: the function name '{name}' is declared twice", param="tools")
    return parsed


def _parse_tool(tool: Any, index: int) -> _Tool:
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise InvalidRequest(f"{where}.type: only tools of type 'function' are supported", param="tools")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise InvalidRequest(f"Missing required parameter: '{where}.function'", param="tools")
    name = function.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.match(name):
        raise InvalidRequest(f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-'", param="tools")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(f"{where}.function.description must be a string", param="tools")
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise InvalidRequest(f"{where}.function.parameters must be a JSON Schema of type 'object'", param="tools")
    return _Tool(index, name, description, parameters)


def _parse_tool_choice(tool_choice: Any, declared: list[_Tool]) -> tuple[str, str | None]:
    """("none" | "auto" | "required", the named function or None)."""
    if tool_choice is None:
        return "auto", None
    if tool_choice in ("none", "auto", "required"):
        if tool_choice == "required" and not declared:
            raise InvalidRequest("tool_choice 'required' needs at least one tool in 'tools'", param="tool_choice")
        return tool_choice, None
    function = tool_choice.get("function") if isinstance(tool_choice, dict) else None
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function" or not isinstance(function, dict):
        raise InvalidRequest("tool_choice must be 'none', 'auto', 'required' or "
                             '{"type": "function", "function": {"name": ...}}', param="tool_choice")
    name = function.get("name")
    if not isinstance(name, str) or name not in {t.name for t in declared}:
        raise InvalidRequest(f"tool_choice names the function {name!r}, which is not in 'tools'",
                             param="tool_choice")
    return "required", name


# -- grammars -------------------------------------------------------------------

def _call_schema(tool: _Tool, arguments_key: str) -> dict:
    return {"type": "object", "additionalProperties": False, "required": ["name", arguments_key],
            "properties": {"name": {"const": tool.name}, arguments_key: tool.parameters}}


def _rebase_refs(schema: Any, base: str) -> Any:
    """A tool's parameters with their ``$ref`` pointers made to point into the combined schema.

    Only subschemas are walked: a "$ref" key inside a ``const`` value stays as it is.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        out["$ref"] = "#" + base + ref[1:]
    for key, value in schema.items():
        if key in _SCHEMA_LIST_KEYWORDS and isinstance(value, list):
            out[key] = [_rebase_refs(v, base) for v in value]
        elif key in _SCHEMA_KEYWORDS:
            out[key] = _rebase_refs(value, base)
        elif key in _SCHEMA_MAP_KEYWORDS and isinstance(value, dict):
            out[key] = {k: _rebase_refs(v, base) for k, v in value.items()}
    return out


_SCHEMA_KEYWORDS = frozenset({"items", "additionalProperties"})
_SCHEMA_LIST_KEYWORDS = frozenset({"items", "prefixItems", "anyOf", "oneOf", "allOf"})
_SCHEMA_MAP_KEYWORDS = frozenset({"properties", "$defs", "definitions"})


def _rebased_calls(tools: list[_Tool], arguments_key: str, base: str) -> dict:
    """Any one call of ``tools``, at ``base`` in the grammar's schema.

    Each tool is checked on its own first, so that an error names it.
    """
    for tool in tools:
        check_schema(tool.parameters, param=tool.param)
    return {"anyOf": [
        _call_schema(replace(t, parameters=_rebase_refs(t.parameters, f"{base}/anyOf/{i}/properties/{arguments_key}")),
                     arguments_key)
        for i, t in enumerate(tools)]}


def _calls_grammar(tools: list[_Tool], arguments_key: str, wrap: Callable[[str], str] | None) -> str:
    return schema_grammar(_rebased_calls(tools, arguments_key, ""), param="tools", wrap=wrap)


def _hermes_grammar(tools: list[_Tool], auto: bool, parallel: bool) -> str:
    def wrap(call: str) -> str:
        one = f'"<tool_call>\\n" {call} "\\n</tool_call>"'
        return f'{one} ("\\n" {one})*' if parallel else one
    return _calls_grammar(tools, "arguments", wrap)


def _llama3_grammar(tools: list[_Tool], auto: bool, parallel: bool) -> str:
    return _calls_grammar(tools, "parameters", None)


def _generic_grammar(tools: list[_Tool], auto: bool, parallel: bool) -> str:
    items = _rebased_calls(tools, "arguments", "/anyOf/0/properties/tool_calls/items")
    calls = {"type": "object", "additionalProperties": False, "required": ["tool_calls"], "properties": {
        "tool_calls": {"type": "array", "minItems": 1, **({} if parallel else {"maxItems": 1}), "items": items}}}
    response = {"type": "object", "additionalProperties": False, "required": ["response"],
                "properties": {"response": {"type": "string"}}}
    # calls sits at /anyOf/0 in both shapes, so the rebased pointers hold either way.
    return schema_grammar({"anyOf": [calls, response] if auto else [calls]}, param="tools")


_GRAMMARS = {ToolFormat.HERMES: _hermes_grammar, ToolFormat.LLAMA3: _llama3_grammar,
             ToolFormat.GENERIC: _generic_grammar}


def _grammar(fmt: ToolFormat, tools: list[_Tool], auto: bool, parallel: bool) -> str:
    # Agents send the same tools every turn; converting them takes milliseconds.
    key = json.dumps([[t.index, t.name, t.parameters] for t in tools])  # key order matters: it is property order
    return _cached_grammar(fmt, key, auto, parallel)


@functools.lru_cache(maxsize=32)
def _cached_grammar(fmt: ToolFormat, tools_key: str, auto: bool, parallel: bool) -> str:
    tools = [_Tool(index, name, None, parameters) for index, name, parameters in json.loads(tools_key)]
    return _GRAMMARS[fmt](tools, auto, parallel)


# -- messages -------------------------------------------------------------------

def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content array."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _arguments(call: dict, where: str) -> tuple[str, Any]:
    """(name, arguments as a JSON value) of an assistant message's tool call."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"{where}.function.name is required", param="messages")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise InvalidRequest(f"{where}.function.arguments is not valid JSON", param="messages") from None
    return function["name"], {} if arguments is None else arguments


def _history(messages: list[dict]) -> list[tuple[int, dict]]:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise InvalidRequest("messages must be an array of objects", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message.get("tool_calls") or [], list):
            raise InvalidRequest(f"messages[{i}].tool_calls must be an array", param="messages")
    return list(enumerate(messages))


def _native_messages(split_calls: bool) -> Callable[..., list[dict]]:
    """Messages for templates that render ``tool_calls`` themselves (HERMES, LLAMA3)."""
    def prepare(messages: list[dict], tools: list[_Tool], choice: str, named: str | None,
                parallel: bool) -> list[dict]:
        out: list[dict] = []
        for i, message in _history(messages):
            message = {k: v for k, v in message.items() if v is not None}
            calls = message.pop("tool_calls", None) or []
            if message.get("role") != "assistant" or not calls:
                out.append(message)
                continue
            message.setdefault("content", "")
            parsed = [_native_call(c, _arguments(c, f"messages[{i}].tool_calls[{j}]")) for j, c in enumerate(calls)]
            groups = [[c] for c in parsed] if split_calls else [parsed]
            out += [{**message, "tool_calls": group} for group in groups]
        return out
    return prepare


def _native_call(call: dict, parsed: tuple[str, Any]) -> dict:
    name, arguments = parsed
    return {**call, "type": "function", "function": {"name": name, "arguments": arguments}}


_GENERIC_INSTRUCTIONS = {
    "auto": ('Answer with one JSON object and nothing else: either {"tool_calls": [{"name": "<tool name>", '
             '"arguments": {<arguments>}}]} to call tools, or {"response": "<your answer>"} to answer the user.'),
    "required": ('Answer with one JSON object and nothing else: {"tool_calls": [{"name": "<tool name>", '
                 '"arguments": {<arguments>}}]}.'),
}


def _generic_system(tools: list[_Tool], choice: str, named: str | None, parallel: bool) -> str:
    lines = [json.dumps({"name": t.name, "description": t.description or "", "parameters": t.parameters},
                        ensure_ascii=False) for t in tools]
    text = "You can call these tools, one per line:\n" + "\n".join(lines) + "\n\n" + _GENERIC_INSTRUCTIONS[choice]
    if named:
        text += f" Call the tool {named}."
    elif not parallel:
        text += " Call at most one tool."
    return text


def _generic_messages(messages: list[dict], tools: list[_Tool], choice: str, named: str | None,
                      parallel: bool) -> list[dict]:
    """Every message as text in the GENERIC answer format, the tools in a system message."""
    out: list[dict] = []
    for i, message in _history(messages):
        role = message.get("role")
        if role == "assistant":
            out.append({"role": "assistant", "content": _generic_assistant(message, i, bool(tools))})
        elif role == "tool":
            out.append({"role": "tool", "content": _text(message.get("content"))})
        else:
            out.append({k: v for k, v in message.items() if v is not None})
    if tools:
        system = _generic_system(tools, choice, named, parallel)
        if out and out[0].get("role") in ("system", "developer"):
            out[0] = {**out[0], "content": f"{_text(out[0].get('content'))}\n\n{system}"}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


def _generic_assistant(message: dict, index: int, in_format: bool) -> str:
    calls = message.get("tool_calls") or []
    if calls:
        parsed = [_arguments(c, f"messages[{index}].tool_calls[{j}]") for j, c in enumerate(calls)]
        return json.dumps({"tool_calls": [{"name": n, "arguments": a} for n, a in parsed]}, ensure_ascii=False)
    text = _text(message.get("content"))
    return json.dumps({"response": text}, ensure_ascii=False) if in_format else text


_MESSAGES = {ToolFormat.HERMES: _native_messages(split_calls=False),
             ToolFormat.LLAMA3: _native_messages(split_calls=True),
             ToolFormat.GENERIC: _generic_messages}


# -- parsing --------------------------------------------------------------------

def parse_tool_calls(text: str, plan: ToolPlan) -> ParsedOutput:
    """The whole generated text -> content and OpenAI ``tool_calls``."""
    stream = ToolCallStream(plan)
    stream.feed(text)
    stream.finish()
    return stream.result()


class ToolCallStream:
    """Incremental ``parse_tool_calls``: feed generated pieces, get OpenAI deltas.

    Text that may still turn out to be (part of) a tool call is held back until
    it is decided; argument fragments go out as they arrive. Whatever the
    pieces, the deltas add up to ``parse_tool_calls`` of the whole text.
    """

    def __init__(self, plan: ToolPlan):
        self._out = _Output(trim=plan.active)
        self._parser = (_PARSERS[plan.format] if plan.active else _Passthrough)(plan, self._out)

    def feed(self, piece: str) -> list[Delta]:
        self._parser.buf += piece
        self._parser.scan(final=False)
        return self._out.take()

    def finish(self) -> list[Delta]:
        self._parser.scan(final=True)
        self._out.end()
        return self._out.take()

    @property
    def has_tool_calls(self) -> bool:
        return bool(self._out.calls)

    def result(self) -> ParsedOutput:
        """Everything parsed so far, as ``parse_tool_calls`` returns it."""
        content = "".join(self._out.content)
        return ParsedOutput(content=content if content or not self._out.calls else None,
                            tool_calls=[_copy_call(c) for c in self._out.calls])


def _copy_call(call: dict) -> dict:
    return {**call, "function": dict(call["function"])}


def _call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


class _Output:
    """Collects content and calls, and the deltas not yet handed out.

    With ``trim``, content is stripped as a whole: leading whitespace is
    dropped and trailing whitespace held until more text follows it.
    """

    def __init__(self, trim: bool):
        self.trim = trim
        self.content: list[str] = []
        self.calls: list[dict] = []
        self._deltas: list[Delta] = []
        self._held = ""

    def text(self, text: str) -> None:
        if self.trim:
            if not self.content:
                text = text.lstrip()
            text = self._held + text
            body = text.rstrip()
            self._held, text = text[len(body):], body
        if text:
            self.content.append(text)
            self._deltas.append(Delta(content=text))

    def open_call(self, name: str) -> None:
        call = {"id": _call_id(), "type": "function", "function": {"name": name, "arguments": ""}}
        self.calls.append(call)
        self._deltas.append(Delta(tool_call={"index": len(self.calls) - 1, **_copy_call(call)}))

    def arguments(self, fragment: str) -> None:
        if fragment:
            self.calls[-1]["function"]["arguments"] += fragment
            self._deltas.append(Delta(tool_call={"index": len(self.calls) - 1,
                                                 "function": {"arguments": fragment}}))

    def call(self, name: str, arguments: str) -> None:
        self.open_call(name)
        self.arguments(arguments)

    def end(self) -> None:
        self._held = ""

    def take(self) -> list[Delta]:
        deltas, self._deltas = self._deltas, []
        return deltas


class _JsonEnd:
    """Finds, fed incrementally, where the JSON object or array starting at ``start`` ends.

    Outside strings, a character that cannot be JSON also ends it (as
    malformed), so a broken call never swallows the text after it.
    """
    _STRUCTURAL = frozenset(' \t\n\r,:-+.0123456789eEtrufalsn"[]{}')

    def __init__(self, start: int):
        self.pos = start
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.end: int | None = None

    def advance(self, text: str) -> int | None:
        while self.end is None and self.pos < len(text):
            self._step(text[self.pos])
            self.pos += 1
        return self.end

    def _step(self, c: str) -> None:
        if self.in_string:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif c == '"':
                self.in_string = False
        elif c == '"':
            self.in_string = True
        elif c in "{[":
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.depth == 0:
                self.end = self.pos + 1
        elif c not in self._STRUCTURAL:
            self.end = self.pos


def _valid_call(text: str, plan: ToolPlan, keys: tuple[str, ...]) -> tuple[str, str] | None:
    """(name, arguments JSON) when ``text`` is one JSON call of a declared tool."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or value["name"] not in plan.tool_names:
        return None
    arguments = next((value[k] for k in keys if k in value), None)
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(arguments, dict):
        return None
    return value["name"], json.dumps(arguments, ensure_ascii=False)


class _Parser:
    """Shared state of the format parsers: the text so far and how far it is decided."""

    def __init__(self, plan: ToolPlan, out: _Output):
        self.plan = plan
        self.out = out
        self.buf = ""
        self.pos = 0
        self.args: _JsonEnd | None = None

    def accepting(self) -> bool:
        return self.plan.parallel or not self.out.calls

    def stream_arguments(self) -> bool:
        """Send the call's arguments up to where they are known; True once they are complete."""
        assert self.args is not None
        start = self.args.pos
        end = self.args.advance(self.buf)
        self.out.arguments(self.buf[start:self.args.pos if end is None else end])
        if end is None:
            return False
        self.pos = end
        return True

    def start_call(self, name: str, args_at: int) -> None:
        self.out.open_call(name)
        self.args = _JsonEnd(args_at)


class _Passthrough(_Parser):
    """No tools in play: every character is content, as it comes."""

    def scan(self, final: bool) -> None:
        self.out.text(self.buf[self.pos:])
        self.pos = len(self.buf)


_NAME = r'"name"\s*:\s*"(?P<name>[^"\\]*)"\s*,\s*'


class _HermesParser(_Parser):
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    HEAD = re.compile(r"\s*\{\s*" + _NAME + r'"arguments"\s*:\s*(?=\{)')

    def __init__(self, plan: ToolPlan, out: _Output):
        super().__init__(plan, out)
        self.state = self.text
        self.block = 0  # where the current <tool_call> block's body starts

    def scan(self, final: bool) -> None:
        while self.state(final):
            pass

    def text(self, final: bool) -> bool:
        at = self.buf.find(self.OPEN, self.pos)
        if at < 0:
            keep = 0 if final else _partial_suffix(self.buf, self.pos, self.OPEN)
            self.out.text(self.buf[self.pos:len(self.buf) - keep])
            self.pos = len(self.buf) - keep
            return False
        self.out.text(self.buf[self.pos:at])
        self.pos = self.block = at + len(self.OPEN)
        self.state = self.head
        return True

    def head(self, final: bool) -> bool:
        close = self.buf.find(self.CLOSE, self.block)
        m = self.HEAD.match(self.buf, self.block, close if close >= 0 else len(self.buf))
        if m and m["name"] in self.plan.tool_names and self.accepting():
            self.start_call(m["name"], m.end())
            self.state = self.arguments
            return True
        if close < 0 and not final:
            return False
        end = close if close >= 0 else len(self.buf)
        call = _valid_call(self.buf[self.block:end], self.plan, ("arguments", "parameters"))
        if call and self.accepting():
            self.out.call(*call)
        elif not call:
            self.out.text(self.buf[self.block - len(self.OPEN):end + (len(self.CLOSE) if close >= 0 else 0)])
        self.pos = end + len(self.CLOSE) if close >= 0 else end
        self.state = self.text
        return True

    def arguments(self, final: bool) -> bool:
        if not self.stream_arguments():
            return False
        self.state = self.tail
        return True

    def tail(self, final: bool) -> bool:
        """After the arguments: the rest of the block up to its closing tag is dropped."""
        close, reopen = self.buf.find(self.CLOSE, self.pos), self.buf.find(self.OPEN, self.pos)
        if reopen >= 0 and (close < 0 or reopen < close):
            self.pos = reopen  # a new block without the old one closed
        elif close >= 0:
            self.pos = close + len(self.CLOSE)
        else:
            if final:
                self.pos = len(self.buf)
            return False
        self.state = self.text
        return True


class _Llama3Parser(_Parser):
    """A call when the answer starts with one; more may follow (after ';' or spaces)."""
    TAG = "<|python_tag|>"
    HEAD = re.compile(r'\{\s*(?:"type"\s*:\s*"function"\s*,\s*)?' + _NAME + r'"(?:parameters|arguments)"\s*:\s*(?=\{)')

    def __init__(self, plan: ToolPlan, out: _Output):
        super().__init__(plan, out)
        self.state = self.start
        self.object: _JsonEnd | None = None

    def scan(self, final: bool) -> None:
        while self.state(final):
            pass

    def start(self, final: bool) -> bool:
        rest = self.buf[self.pos:]
        stripped = rest.lstrip(" \t\r\n;")
        if stripped.startswith(self.TAG):
            self.pos += len(rest) - len(stripped) + len(self.TAG)
            return True
        if not final and (not stripped or self.TAG.startswith(stripped)):
            return False  # nothing yet, or maybe the tag
        if not stripped.startswith("{"):
            self.state = self.content
            return bool(stripped)
        self.pos += len(rest) - len(stripped)
        self.object = _JsonEnd(self.pos)
        self.state = self.head
        return True

    def head(self, final: bool) -> bool:
        m = self.HEAD.match(self.buf, self.pos)
        if m and m["name"] in self.plan.tool_names:
            if self.accepting():
                self.start_call(m["name"], m.end())
                self.state = self.arguments
            else:
                self.state = self.skip  # one call too many
            return True
        assert self.object is not None
        end = self.object.advance(self.buf)
        if end is None and not final:
            return False
        call = _valid_call(self.buf[self.pos:end], self.plan, ("parameters", "arguments"))
        if call is None:
            self.state = self.content
            return True
        if self.accepting():
            self.out.call(*call)
        self.pos, self.state = len(self.buf) if end is None else end, self.start
        return True

    def arguments(self, final: bool) -> bool:
        if not self.stream_arguments():
            return False
        self.state = self.skip
        return True

    def skip(self, final: bool) -> bool:
        """To the end of the call object; what follows the arguments inside it is dropped."""
        assert self.object is not None
        end = self.object.advance(self.buf)
        if end is None:
            if final:
                self.pos = len(self.buf)
            return False
        self.pos, self.state = end, self.start
        return True

    def content(self, final: bool) -> bool:
        self.out.text(self.buf[self.pos:])
        self.pos = len(self.buf)
        return False


class _GenericParser(_Parser):
    """The one-JSON-object answer: ``{"tool_calls": [...]}`` or ``{"response": "..."}``."""
    CALLS = re.compile(r'\s*\{\s*"tool_calls"\s*:\s*\[')
    RESPONSE = re.compile(r'\s*\{\s*"response"\s*:\s*"')
    ITEM = re.compile(r"\{\s*" + _NAME + r'"arguments"\s*:\s*(?=\{)')

    def __init__(self, plan: ToolPlan, out: _Output):
        super().__init__(plan, out)
        self.state = self.start
        self.object: _JsonEnd | None = None  # the whole answer, when it is read whole
        self.item: _JsonEnd | None = None  # the current element of tool_calls
        self.envelope: int | None = None  # where a tool_calls answer starts

    def scan(self, final: bool) -> None:
        while self.state(final):
            pass
        if final and self.envelope is not None and not self.out.calls:
            self.out.text(self.buf[self.envelope:])  # a broken answer is shown, not lost

    def start(self, final: bool) -> bool:
        if m := self.CALLS.match(self.buf, self.pos):
            self.envelope, self.pos, self.state = self.pos, m.end(), self.items
            return True
        if m := self.RESPONSE.match(self.buf, self.pos):
            self.pos, self.state = m.end(), self.response
            return True
        stripped = self.buf[self.pos:].lstrip()
        if stripped and not stripped.startswith("{"):
            self.state = self.content
            return True
        if not stripped:
            return False
        # Another spelling of the answer (key order, spacing): read it whole.
        self.object = self.object or _JsonEnd(len(self.buf) - len(stripped))
        if self.object.advance(self.buf) is None and not final:
            return False
        self.state = self.whole
        return True

    def whole(self, final: bool) -> bool:
        text = self.buf[self.pos:]
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        calls = value.get("tool_calls") if isinstance(value, dict) else None
        response = isinstance(value, dict) and set(value) == {"response"} and isinstance(value["response"], str)
        if response:
            self.out.text(value["response"])
        elif isinstance(calls, list):
            for item in calls:
                self.complete_call(json.dumps(item))
        if not response and not self.out.calls:
            self.out.text(text)
        self.pos = len(self.buf)
        return False

    def complete_call(self, text: str) -> None:
        call = _valid_call(text, self.plan, ("arguments",))
        if call and self.accepting():
            self.out.call(*call)

    def items(self, final: bool) -> bool:
        """Between elements of tool_calls."""
        rest = self.buf[self.pos:]
        stripped = rest.lstrip(" \t\r\n,")
        self.pos += len(rest) - len(stripped)
        if not stripped:
            return False
        if not stripped.startswith("{"):
            self.state = self.ignore  # "]" and the end of the answer
            return True
        self.item, self.state = _JsonEnd(self.pos), self.item_head
        return True

    def item_head(self, final: bool) -> bool:
        assert self.item is not None
        m = self.ITEM.match(self.buf, self.pos)
        if m and m["name"] in self.plan.tool_names and self.accepting():
            self.start_call(m["name"], m.end())
            self.state = self.arguments
            return True
        end = self.item.advance(self.buf)
        if end is None and not final:
            return False
        self.complete_call(self.buf[self.pos:end])
        self.pos, self.state = len(self.buf) if end is None else end, self.items
        return end is not None

    def arguments(self, final: bool) -> bool:
        if not self.stream_arguments():
            return False
        self.state = self.item_rest
        return True

    def item_rest(self, final: bool) -> bool:
        assert self.item is not None
        end = self.item.advance(self.buf)
        if end is None:
            return False
        self.pos, self.state = end, self.items
        return True

    def response(self, final: bool) -> bool:
        text, self.pos, closed = _decode_json_string(self.buf, self.pos, final)
        self.out.text(text)
        if closed:
            self.state = self.ignore
        return closed

    def content(self, final: bool) -> bool:
        self.out.text(self.buf[self.pos:])
        self.pos = len(self.buf)
        return False

    def ignore(self, final: bool) -> bool:
        self.pos = len(self.buf)
        return False


_PARSERS = {ToolFormat.HERMES: _HermesParser, ToolFormat.LLAMA3: _Llama3Parser,
            ToolFormat.GENERIC: _GenericParser}


def _partial_suffix(text: str, start: int, tag: str) -> int:
    """Length of the longest end of ``text[start:]`` that begins ``tag``."""
    for n in range(min(len(tag) - 1, len(text) - start), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def _decode_json_string(text: str, pos: int, final: bool) -> tuple[str, int, bool]:
    """Decode a JSON string body from ``pos``: (decoded text, new pos, closed).

    Stops before an escape that is not complete yet (a surrogate pair needs
    both halves); when ``final``, such an escape is dropped.
    """
    out: list[str] = []
    while pos < len(text):
        c = text[pos]
        if c == '"':
            return "".join(out), pos + 1, True
        if c != "\\":
            out.append(c)
            pos += 1
            continue
        decoded, size = _decode_escape(text, pos)
        if size == 0:  # an escape cut short: wait for the rest, or drop it at the end
            return "".join(out), len(text) if final else pos, False
        out.append(decoded)
        pos += size
    return "".join(out), pos, False


def _decode_escape(text: str, pos: int) -> tuple[str, int]:
    """(character, escape length) at ``text[pos] == '\\'``; length 0 when incomplete."""
    if pos + 1 >= len(text):
        return "", 0
    e = text[pos + 1]
    if e != "u":
        return _ESCAPES.get(e, e), 2
    code = _hex(text[pos + 2:pos + 6])
    if code is None:
        return ("", 0) if len(text) < pos + 6 else (text[pos + 1:pos + 6], 6)
    if 0xD800 <= code < 0xDC00:
        if len(text) < pos + 12:
            return "", 0
        low = _hex(text[pos + 8:pos + 12]) if text[pos + 6:pos + 8] == "\\u" else None
        if low is not None and 0xDC00 <= low < 0xE000:
            return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), 12
    return ("\ufffd" if 0xD800 <= code < 0xE000 else chr(code)), 6  # no lone surrogates in UTF-8


def _hex(digits: str) -> int | None:
    if len(digits) != 4 or any(c not in string.hexdigits for c in digits):
        return None
    return int(digits, 16)
