"""Tool calls: request validation, the prompt each format renders, the grammars
(parsed and run on llama.cpp's grammar sampler), and parsing of the model's
text, whole and streamed in every chunking."""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from runtime.errors import InvalidRequest
from runtime.gateway import tools as tools_module
from runtime.gateway.tools import (
    ParsedOutput,
    ToolCallStream,
    ToolFormat,
    detect_format,
    parse_tool_calls,
    plan_tools,
)
from tests.support.grammar_check import embedded_tokenizer

TEMPLATES = Path(__file__).parent.parent / "fixtures" / "chat_templates"
QWEN = (TEMPLATES / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
LLAMA31 = (TEMPLATES / "meta-llama-Llama-3.1-8B-Instruct.jinja").read_text()

HERMES, LLAMA3, GENERIC = ToolFormat.HERMES, ToolFormat.LLAMA3, ToolFormat.GENERIC


def _tool(name: str, parameters: dict | None = None, description: str = "") -> dict:
    function: dict = {"name": name, "description": description or f"The {name} tool"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


WEATHER = _tool("get_weather", {"type": "object", "additionalProperties": False, "required": ["city"], "properties": {
    "city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}}})
TIME = _tool("get_time", {"type": "object", "required": ["tz"], "properties": {"tz": {"type": "string"}}})
PING = _tool("ping")
TOOLS = [WEATHER, TIME, PING]
USER = [{"role": "user", "content": "What's the weather in Paris?"}]
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What's the weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_abc", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'}}]},
    {"role": "tool", "tool_call_id": "call_abc", "content": "21 degrees, sunny"},
    {"role": "user", "content": "And in Rome?"},
]


def _plan(fmt: ToolFormat, tool_choice="auto", parallel=True, tools=TOOLS, messages=USER):
    return plan_tools(tools, tool_choice, parallel, messages, fmt)


def _calls(parsed: ParsedOutput) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls]


# -- formats --------------------------------------------------------------------

def test_detect_format_from_the_chat_template():
    assert detect_format(QWEN) is HERMES
    assert detect_format(LLAMA31) is LLAMA3
    assert detect_format(None) is GENERIC
    assert detect_format("{% for m in messages %}{{ m.content }}{% endfor %}") is GENERIC


def test_templates_with_xml_arguments_are_not_taken_for_hermes():
    qwen3_coder = "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}<parameter=x>"
    glm = "{{ '<tool_call>' + tc.name }}<arg_key>{{ k }}</arg_key>"
    assert detect_format(qwen3_coder) is GENERIC
    assert detect_format(glm) is GENERIC


# -- validation -----------------------------------------------------------------

@pytest.mark.parametrize("tools, tool_choice, param, message", [
    (TOOLS, {"type": "function", "function": {"name": "nope"}}, "tool_choice", "'nope'"),
    (None, "required", "tool_choice", "at least one tool"),
    ([], "required", "tool_choice", "at least one tool"),
    (TOOLS, "sometimes", "tool_choice", "must be"),
    (TOOLS, {"type": "function"}, "tool_choice", "must be"),
    ([{"type": "code_interpreter"}], "auto", "tools", "only tools of type 'function'"),
    ([{"type": "function"}], "auto", "tools", "tools[0].function"),
    ([_tool("get weather")], "auto", "tools", "tools[0].function.name"),
    ([_tool("x" * 65)], "auto", "tools", "tools[0].function.name"),
    ([WEATHER, _tool("f", {"type": "array", "items": {}})], "auto", "tools", "tools[1].function.parameters"),
    ([_tool("f", [])], "auto", "tools", "tools[0].function.parameters"),
    ([WEATHER, WEATHER], "auto", "tools", "declared twice"),
    ("get_weather", "auto", "tools", "array"),
])
def test_invalid_tool_requests_are_400s(tools, tool_choice, param, message):
    with pytest.raises(InvalidRequest) as err:
        plan_tools(tools, tool_choice, True, USER, HERMES)
    assert err.value.status == 400 and err.value.param == param
    assert message in err.value.message


def test_the_number_and_size_of_tools_are_bounded():
    with pytest.raises(InvalidRequest, match="at most"):
        plan_tools([_tool(f"t{i}") for i in range(tools_module.MAX_TOOLS + 1)], "auto", True, USER, HERMES)
    with pytest.raises(InvalidRequest, match="at most 2 tools"):
        plan_tools([_tool(f"t{i}") for i in range(3)], "auto", True, USER, HERMES, max_tools=2)
    with pytest.raises(InvalidRequest, match="exceed 200"):
        plan_tools(TOOLS, "auto", True, USER, HERMES, max_chars=200)


def test_a_forced_call_with_parameters_the_grammar_cannot_enforce_is_a_400():
    bounded = _tool("page", {"type": "object", "properties": {"n": {"type": "number", "minimum": 1}}})
    for fmt in (HERMES, LLAMA3, GENERIC):
        with pytest.raises(InvalidRequest) as err:
            plan_tools([bounded], "required", True, USER, fmt)
        assert err.value.param == "tools[0].function.parameters" and "'minimum'" in err.value.message
    # free-text formats in auto mode show the schema to the model and enforce nothing
    assert plan_tools([bounded], "auto", True, USER, HERMES).grammar is None


def test_invalid_arguments_json_in_the_history_is_a_400():
    bad = [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                                  "function": {"name": "get_weather", "arguments": "{nope"}}]}]
    for fmt in ToolFormat:
        with pytest.raises(InvalidRequest) as err:
            plan_tools(TOOLS, "auto", True, bad, fmt)
        assert err.value.param == "messages" and "messages[0].tool_calls[0]" in err.value.message


# -- plans ----------------------------------------------------------------------

def test_auto_in_a_native_format_needs_no_grammar():
    for fmt in (HERMES, LLAMA3):
        plan = _plan(fmt)
        assert plan.active and plan.grammar is None and plan.format is fmt
        assert [t["function"]["name"] for t in plan.tools_for_template] == ["get_weather", "get_time", "ping"]
        assert plan.tools_for_template[2]["function"]["parameters"] == {"type": "object", "properties": {}}


def test_required_named_and_generic_plans_carry_a_grammar():
    assert "<tool_call>" in _plan(HERMES, "required").grammar
    assert '\\"parameters\\"' in _plan(LLAMA3, "required").grammar
    named = _plan(HERMES, {"type": "function", "function": {"name": "get_time"}})
    assert "get_time" in named.grammar and "get_weather" not in named.grammar
    generic = _plan(GENERIC)
    assert "tool_calls" in generic.grammar and "response" in generic.grammar
    assert "response" not in _plan(GENERIC, "required").grammar


def test_tool_choice_none_or_no_tools_leaves_tools_out():
    for plan in (_plan(HERMES, "none"), _plan(GENERIC, "none"), _plan(HERMES, tools=None), _plan(GENERIC, tools=[])):
        assert not plan.active and plan.grammar is None and plan.tools_for_template is None
        assert plan.messages == USER


def test_native_history_has_parsed_arguments_and_keeps_tool_results():
    plan = _plan(HERMES, messages=CONVERSATION)
    assistant, tool = plan.messages[2], plan.messages[3]
    assert assistant["tool_calls"][0]["function"]["arguments"] == {"city": "Paris", "unit": "C"}
    assert assistant["content"] == ""
    assert tool == CONVERSATION[3]
    assert "tool_calls" not in plan.messages[1]


def test_llama3_history_gives_each_call_its_own_assistant_message():
    two = {"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "b", "type": "function", "function": {"name": "get_time", "arguments": '{"tz": "CET"}'}}]}
    plan = _plan(LLAMA3, messages=[*USER, two])
    assert [len(m["tool_calls"]) for m in plan.messages[1:]] == [1, 1]
    assert not plan.parallel


def test_generic_history_is_the_json_answer_format_and_tools_join_the_system_message():
    plan = _plan(GENERIC, messages=CONVERSATION)
    system, _, assistant, tool = plan.messages[:4]
    assert system["role"] == "system" and system["content"].startswith("You are terse.\n\n")
    assert '"name": "get_weather"' in system["content"] and '{"response": ' in system["content"]
    assert json.loads(assistant["content"]) == {
        "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]}
    assert tool == {"role": "tool", "content": "21 degrees, sunny"}
    earlier_answer = _plan(GENERIC, messages=[*USER, {"role": "assistant", "content": "Sunny."}])
    assert json.loads(earlier_answer.messages[-1]["content"]) == {"response": "Sunny."}
    assert earlier_answer.messages[0]["role"] == "system"


# -- parsing whole ----------------------------------------------------------------

HERMES_TWO = ('I will check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
              '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>')
GENERIC_TWO = ('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
               '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}]}')
TWO = [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris"})]


def test_hermes_calls_and_content_parse():
    parsed = parse_tool_calls(HERMES_TWO, _plan(HERMES))
    assert parsed.content == "I will check both." and _calls(parsed) == TWO
    call = parsed.tool_calls[0]
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", call["id"]) and call["type"] == "function"
    assert call["function"]["arguments"] == '{"city": "Paris"}'  # the model's text, as OpenAI returns it
    assert len({c["id"] for c in parsed.tool_calls}) == 2


def test_llama3_call_parses_with_or_without_python_tag():
    plan = _plan(LLAMA3)
    for text in ('{"name": "get_weather", "parameters": {"city": "Paris"}}',
                 '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
                 '\n{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}'):
        parsed = parse_tool_calls(text, plan)
        assert parsed.content is None and _calls(parsed) == [("get_weather", {"city": "Paris"})], text


def test_generic_calls_and_response_parse():
    plan = _plan(GENERIC)
    parsed = parse_tool_calls(GENERIC_TWO, plan)
    assert parsed.content is None and _calls(parsed) == TWO
    answer = parse_tool_calls('{"response": "It is \\"sunny\\".\\nBye \\u00e9\\ud83d\\ude00"}', plan)
    assert answer.content == 'It is "sunny".\nBye é😀' and answer.tool_calls == []


def test_plain_text_in_auto_is_content():
    text = "The weather in Paris is mild, about 20 degrees."
    for fmt in (HERMES, LLAMA3):
        assert parse_tool_calls(text, _plan(fmt)) == ParsedOutput(content=text, tool_calls=[])
    assert parse_tool_calls(text, _plan(GENERIC)).content == text


@pytest.mark.parametrize("fmt, text", [
    (HERMES, "<tool_call>\nnot json at all\n</tool_call>"),
    (HERMES, '<tool_call>\n{"name": "unknown_tool", "arguments": {}}\n</tool_call>'),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": "not an object"}\n</tool_call>'),
    (HERMES, "Use <tool_ca"),
    (LLAMA3, '{"name": "unknown_tool", "parameters": {"city": "Paris"}}'),
    (LLAMA3, '{"city": "Paris"}'),
    (LLAMA3, 'I would call {"name": "get_weather", "parameters": {"city": "Paris"}}'),
    (GENERIC, '{"tool_calls": [{"name": "unknown_tool", "arguments": {}}]}'),
    (GENERIC, '{"answer": 42}'),
    (GENERIC, "not json"),
])
def test_malformed_calls_in_auto_stay_content(fmt, text):
    parsed = parse_tool_calls(text, _plan(fmt))
    assert parsed.tool_calls == [] and parsed.content == text.strip()


def test_hermes_text_around_calls_is_content_and_arguments_may_hold_the_closing_tag():
    text = ('Before\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "x</tool_call>y"}}\n</tool_call>\n'
            'After')
    parsed = parse_tool_calls(text, _plan(HERMES))
    assert parsed.content == "Before\n\nAfter"
    assert _calls(parsed) == [("get_weather", {"city": "x</tool_call>y"})]


def test_hermes_calls_with_arguments_first_or_as_a_string_are_understood():
    plan = _plan(HERMES)
    for body in ('{"arguments": {"city": "Paris"}, "name": "get_weather"}',
                 '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}'):
        parsed = parse_tool_calls(f"<tool_call>\n{body}\n</tool_call>", plan)
        assert _calls(parsed) == [("get_weather", {"city": "Paris"})], body


def test_without_parallel_tool_calls_only_the_first_call_counts():
    assert _calls(parse_tool_calls(HERMES_TWO, _plan(HERMES, parallel=False))) == TWO[:1]
    assert _calls(parse_tool_calls(GENERIC_TWO, _plan(GENERIC, parallel=False))) == TWO[:1]


def test_truncated_call_keeps_what_was_generated():
    parsed = parse_tool_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par', _plan(HERMES))
    assert parsed.tool_calls[0]["function"]["arguments"] == '{"city": "Par'


def test_inactive_plan_passes_text_through_untouched():
    text = '  <tool_call>\n{"name": "get_weather", "arguments": {}}\n</tool_call>\n'
    assert parse_tool_calls(text, _plan(HERMES, "none")) == ParsedOutput(content=text, tool_calls=[])


# -- streaming --------------------------------------------------------------------

STREAM_CASES = [
    (HERMES, HERMES_TWO),
    (HERMES, "Plain answer, no tools.\n"),
    (HERMES, '<tool_call>\n{"arguments": {"city": "Paris"}, "name": "get_weather"}\n</tool_call>'),
    (HERMES, "<tool_call>\nbroken\n</tool_call> and text <tool_call>"),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "x\\"}</tool_call>"}}\n</tool_call>x'),
    (HERMES, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par'),
    (LLAMA3, '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}'),
    (LLAMA3, "  Just text {with braces}"),
    (LLAMA3, '{"parameters": {"city": "Paris"}, "name": "get_weather"}'),
    (LLAMA3, '{"name": "nope", "parameters": {}}'),
    (GENERIC, GENERIC_TWO),
    (GENERIC, '{"response": "Line one\\nLine \\"two\\" \\u00e9\\ud83d\\ude00 \\\\ end  "}'),
    (GENERIC, '{ "tool_calls" : [ { "arguments" : {"tz": "UTC"}, "name" : "get_time" } ] }'),
    (GENERIC, '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Pa'),
    (GENERIC, '{"response": "cut \\ud83d'),
    (GENERIC, "no json here"),
]


def _stream(plan, pieces: list[str]) -> tuple[list, ToolCallStream]:
    stream = ToolCallStream(plan)
    deltas = [d for piece in pieces for d in stream.feed(piece)]
    return deltas + stream.finish(), stream


def _assemble(deltas) -> tuple[str | None, list[tuple[str, str]]]:
    content = "".join(d.content for d in deltas if d.content is not None)
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        call = delta.tool_call
        if call is None:
            continue
        if "id" in call:
            assert call["type"] == "function" and call["function"]["arguments"] == "" and call["index"] not in calls
            calls[call["index"]] = [call["function"]["name"], ""]
        else:
            assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
            calls[call["index"]][1] += call["function"]["arguments"]
    return content or (None if calls else ""), [tuple(calls[i]) for i in sorted(calls)]


def _chunkings(text: str, seed: int):
    rng = random.Random(seed)
    yield [text]
    yield list(text)
    for _ in range(5):
        pieces, i = [], 0
        while i < len(text):
            n = rng.randint(1, 9)
            pieces.append(text[i:i + n])
            i += n
        yield pieces


@pytest.mark.parametrize("fmt, text", STREAM_CASES)
def test_streamed_deltas_add_up_to_the_whole_parse_in_every_chunking(fmt, text):
    for plan in (_plan(fmt), _plan(fmt, "required")):
        whole = parse_tool_calls(text, plan)
        expected = (whole.content, [(c["function"]["name"], c["function"]["arguments"]) for c in whole.tool_calls])
        for pieces in _chunkings(text, seed=len(text)):
            deltas, stream = _stream(plan, pieces)
            assert _assemble(deltas) == expected, pieces
            result = stream.result()
            assert (result.content, [(c["function"]["name"], c["function"]["arguments"])
                                     for c in result.tool_calls]) == expected
            assert stream.has_tool_calls == bool(whole.tool_calls)


def test_random_model_output_never_raises_and_streams_consistently():
    rng = random.Random(5)
    pieces = ['{"name": "get_weather", "arguments": {"city": "Oslo"}}', "<tool_call>", "</tool_call>", "<|python_tag|>",
              '{"tool_calls": [', '{"response": "', '"name": ["get_weather"], ', "{", "}", "[", "]", '"', "\\",
              "\\u", "d83d", " ", "\n", ",", ":", "text", '"parameters": {']
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for fmt in ToolFormat:
            plan = _plan(fmt, rng.choice(["auto", "required"]), rng.random() < 0.5)
            whole = parse_tool_calls(text, plan)
            expected = (whole.content, [(c["function"]["name"], c["function"]["arguments"]) for c in whole.tool_calls])
            for chunks in list(_chunkings(text, seed=rng.randint(0, 10**6)))[1:3]:
                assert _assemble(_stream(plan, chunks)[0]) == expected, (fmt, text)


def test_arguments_stream_as_they_are_generated():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'
    stream = ToolCallStream(_plan(HERMES))
    fragments_before_close = []
    for i, char in enumerate(text):
        for delta in stream.feed(char):
            if delta.tool_call and "id" not in delta.tool_call:
                fragments_before_close.append(i < text.index("}}"))
    assert len(fragments_before_close) > 5 and all(fragments_before_close[:-2])


def test_text_that_may_open_a_call_is_held_back():
    stream = ToolCallStream(_plan(HERMES))
    assert [d.content for d in stream.feed("Checking. <tool_")] == ["Checking."]
    assert stream.feed("ca") == []
    first = stream.feed('ll>\n{"name": "ping", "arguments": {}}')
    assert first[0].tool_call["function"]["name"] == "ping" and stream.has_tool_calls
    stream.feed("\n</tool_call>")
    assert stream.finish() == []


def test_generic_response_streams_as_decoded_content():
    stream = ToolCallStream(_plan(GENERIC))
    assert stream.feed('{"response": "Hel') == [tools_module.Delta(content="Hel")]
    assert stream.feed('lo\\') == [tools_module.Delta(content="lo")]
    assert stream.feed('n"}') == []  # the newline waits: trailing whitespace is trimmed
    assert stream.finish() == [] and stream.result().content == "Hello"


# -- on llama.cpp: grammars parse and constrain -------------------------------------

GRAMMAR_CASES = [
    # format, tool_choice, parallel, accepted, rejected
    (HERMES, "required", True,
     [HERMES_TWO.split("\n", 1)[1], '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>'],
     [HERMES_TWO, "Sure!", '<tool_call>\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n</tool_call>',
      '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>']),
    (HERMES, "required", False,
     ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "F"}}\n</tool_call>'],
     [HERMES_TWO.split("\n", 1)[1],
      '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "K"}}\n</tool_call>']),
    (HERMES, {"type": "function", "function": {"name": "get_time"}}, True,
     ['<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call>'],
     ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>']),
    (LLAMA3, "required", True,
     ['{"name": "get_weather", "parameters": {"city": "Paris"}}', '{"name": "ping", "parameters": {}}'],
     ['{"name": "get_weather", "arguments": {"city": "Paris"}}', '{"name": "get_weather", "parameters": {}}',
      '{"name": "ping", "parameters": {}}{"name": "ping", "parameters": {}}']),
    (GENERIC, "auto", True,
     [GENERIC_TWO, '{"response": "Hello!"}', '{"tool_calls": [{"name": "ping", "arguments": {}}]}'],
     ['{"tool_calls": []}', "Hello!", '{"response": "a", "tool_calls": []}',
      '{"tool_calls": [{"name": "get_time", "arguments": {}}]}']),
    (GENERIC, "required", False,
     ['{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'],
     [GENERIC_TWO, '{"response": "Hello!"}']),
]


@pytest.mark.llama
@pytest.mark.parametrize("fmt, tool_choice, parallel, accepted, rejected", GRAMMAR_CASES)
def test_tool_grammars_parse_and_constrain_the_output(checker, fmt, tool_choice, parallel, accepted, rejected):
    plan = _plan(fmt, tool_choice, parallel)
    assert checker.parses(plan.grammar)
    for text in accepted:
        assert checker.accepts(plan.grammar, text), text
        parsed = parse_tool_calls(text, plan)
        assert parsed.tool_calls or parsed.content == json.loads(text)["response"], text
    for text in rejected:
        assert not checker.accepts(plan.grammar, text), text


@pytest.mark.llama
def test_tool_parameters_with_defs_from_pydantic_are_enforced(checker):
    from openai import pydantic_function_tool
    from pydantic import BaseModel

    class Address(BaseModel):
        city: str

    class Ship(BaseModel):
        to: Address
        also: list[Address]

    class Address2(BaseModel):  # a second tool with its own $defs, also named Address
        zip: str

    class Bill(BaseModel):
        to: Address2

    ship, bill = pydantic_function_tool(Ship), pydantic_function_tool(Bill)
    bill["function"]["parameters"]["$defs"] = {"Address": bill["function"]["parameters"]["$defs"].pop("Address2")}
    bill["function"]["parameters"]["properties"]["to"] = {"$ref": "#/$defs/Address"}
    for fmt in ToolFormat:
        plan = plan_tools([ship, bill], "required", True, USER, fmt)
        assert checker.parses(plan.grammar)
    generic = plan_tools([ship, bill], "required", True, USER, GENERIC)
    good = ('{"tool_calls": [{"name": "Ship", "arguments": {"to": {"city": "Oslo"}, "also": []}}, '
            '{"name": "Bill", "arguments": {"to": {"zip": "0150"}}}]}')
    assert checker.accepts(generic.grammar, good)
    assert not checker.accepts(generic.grammar, good.replace('{"zip": "0150"}', '{"city": "Oslo"}'))


# -- rendering a multi-turn conversation ------------------------------------------

@pytest.mark.llama
@pytest.mark.parametrize("template, expected_call, expected_result", [
    (QWEN, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>',
     "<tool_response>\n21 degrees, sunny\n</tool_response>"),
    (LLAMA31, '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "C"}}<|eot_id|>',
     '<|start_header_id|>ipython<|end_header_id|>\n\n"21 degrees, sunny"<|eot_id|>'),
    (None, 'assistant: {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}]}\n',
     "tool: 21 degrees, sunny\n"),
], ids=["qwen2.5", "llama3.1", "fallback"])
def test_multi_turn_tool_conversation_renders_the_call_and_the_result(model_cache, template, expected_call,
                                                                      expected_result):
    tokenizer = embedded_tokenizer(str(model_cache), template)
    plan = plan_tools(TOOLS, "auto", True, CONVERSATION, detect_format(tokenizer.chat_template))
    prompt = tokenizer.render_prompt(plan.messages, plan.tools_for_template)
    assert expected_call in prompt and expected_result in prompt
    assert prompt.index(expected_call) < prompt.index(expected_result) < prompt.index("And in Rome?")
    assert "get_time" in prompt  # the tools are described to the model
    assert tokenizer.render_chat(plan.messages, plan.tools_for_template)
