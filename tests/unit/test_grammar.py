"""response_format -> GBNF: what is refused (400s naming the keyword), and, on
llama.cpp's own grammar sampler over the embedded model's vocab, that each
grammar parses and accepts exactly the JSON its schema describes."""
from __future__ import annotations

import json
from enum import Enum
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from runtime.errors import InvalidRequest
from runtime.gateway import grammar
from runtime.gateway.grammar import (
    JSON_OBJECT_GRAMMAR,
    check_schema,
    json_string_pattern,
    response_format_grammar,
    schema_grammar,
)

PARAM = "response_format.json_schema.schema"


def _json_schema(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


# -- what response_format asks for ----------------------------------------------

def test_text_and_absent_response_formats_need_no_grammar():
    assert response_format_grammar(None) is None
    assert response_format_grammar({"type": "text"}) is None


def test_json_object_is_llama_cpps_json_grammar_with_an_object_at_the_root():
    assert response_format_grammar({"type": "json_object"}) == JSON_OBJECT_GRAMMAR
    assert JSON_OBJECT_GRAMMAR.lstrip().startswith("root") and "::= object" in JSON_OBJECT_GRAMMAR


@pytest.mark.parametrize("response_format, param", [
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "{}"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}}, "response_format.json_schema.name"),
    ({"type": "yaml"}, "response_format.type"),
    ({}, "response_format.type"),
    ("json_object", "response_format"),
])
def test_malformed_response_format_is_a_400_naming_the_field(response_format, param):
    with pytest.raises(InvalidRequest) as err:
        response_format_grammar(response_format)
    assert err.value.status == 400 and err.value.param == param


# -- what the converter would silently ignore is refused -------------------------

@pytest.mark.parametrize("schema, keyword", [
    ({"not": {"type": "string"}}, "not"),
    ({"if": {"type": "string"}, "then": {"minLength": 1}}, "if"),
    ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "patternProperties"),
    ({"type": "object", "properties": {"a": {}}, "dependentSchemas": {"a": {}}}, "dependentSchemas"),
    ({"type": "array", "items": {"type": "integer"}, "contains": {"const": 1}}, "contains"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "number", "multipleOf": 2}, "multipleOf"),
    ({"type": "integer", "minimum": 0, "multipleOf": 5}, "multipleOf"),
    ({"type": "number", "minimum": 0}, "'minimum' is not supported for type 'number'"),
    ({"type": "number", "exclusiveMaximum": 10}, "'exclusiveMaximum' is not supported for type 'number'"),
    ({"maximum": 10}, "'maximum' is not supported for type 'number'"),
    ({"type": ["integer", "number"], "minimum": 0}, "'minimum' is not supported for type 'number'"),
    ({"type": "integer", "minimum": 5, "maximum": 4}, "no integer lies within the bounds"),
    ({"type": "integer", "exclusiveMinimum": 4, "exclusiveMaximum": 5}, "no integer lies within the bounds"),
    ({"type": "integer", "minimum": 0.5, "maximum": 0.9}, "no integer lies within the bounds"),
    ({"type": "integer", "minimum": "0"}, "'minimum' must be a number"),
    ({"type": "integer", "maximum": None}, "'maximum' must be a number"),
    ({"type": "integer", "maximum": 1e30}, "at most 20 digits"),
    ({"type": "integer", "minimum": float("-inf")}, "finite"),
    ({"type": "integer", "exclusiveMinimum": True}, "'exclusiveMinimum': true needs 'minimum'"),
    ({"enum": [1, 2], "minimum": 0}, "'minimum' is not supported next to 'enum'"),
    ({"type": "object", "minProperties": 1}, "minProperties"),
    ({"type": "object", "propertyNames": {"pattern": "^a"}}, "propertyNames"),
    ({"type": "string", "nullable": True}, "nullable"),
    ({"type": "string", "format": "email"}, "format 'email'"),
    ({"type": "integer", "format": "int32"}, "'format'"),
    ({"$ref": "https://example.com/schema.json"}, "https://example.com/schema.json"),
    ({"$ref": "other.json#/Foo"}, "other.json#/Foo"),
    ({"type": "string", "pattern": "^a$", "maxLength": 3}, "pattern and maxLength"),
    ({"type": "string", "enum": ["a", "b"], "maxLength": 3}, "'maxLength'"),
    ({"$ref": "#/$defs/A", "type": "object", "$defs": {"A": {"type": "object"}}}, "'type'"),
    ({"anyOf": [{"type": "string"}], "properties": {"a": {}}}, "'properties'"),
    ({"type": "array", "prefixItems": [{"type": "string"}], "items": {"type": "integer"}}, "prefixItems"),
    ({"type": "object", "required": ["a"]}, "required property 'a'"),
    ({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                                "maxContains": 2}}}, "maxContains"),
])
def test_unsupported_schema_feature_is_a_400_naming_it(schema, keyword):
    with pytest.raises(InvalidRequest) as err:
        response_format_grammar(_json_schema(schema))
    assert err.value.status == 400 and err.value.param == PARAM
    assert keyword in err.value.message and err.value.message.startswith(PARAM)


def test_the_error_names_the_path_inside_the_schema():
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"}}},
              "$defs": {"Item": {"type": "object", "properties": {"n": {"type": "number", "maximum": 3}}}}}
    with pytest.raises(InvalidRequest, match=r"schema\.\$defs\.Item\.properties\.n: 'maximum' is not supported"):
        schema_grammar(schema, param="schema")


@pytest.mark.parametrize("pattern, reason", [
    ("^(?=a)b$", "lookaround"),
    ("^(a)\\1$", "\\1"),
    ("^\\bword$", "\\b"),
    ("^a$|^b$", "only supported at the start and end"),
    ("^\\p{L}+$", "\\p"),
    ("^(ab$", "unbalanced"),
    ("^*a$", "nothing to repeat"),
    ("^a{2000}$", "at most"),
    ("^[\\n\\t]$", "JSON escapes"),
])
def test_regex_patterns_outside_the_grammar_subset_are_refused(pattern, reason):
    with pytest.raises(InvalidRequest) as err:
        schema_grammar({"type": "string", "pattern": pattern}, param="p")
    assert reason in err.value.message


def test_hostile_schemas_are_bounded(monkeypatch):
    deep: dict = {"type": "string"}
    for _ in range(grammar.MAX_SCHEMA_DEPTH + 2):
        deep = {"type": "array", "items": deep}
    with pytest.raises(InvalidRequest, match="deeper"):
        schema_grammar(deep, param="s")
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(50)}}
    monkeypatch.setattr(grammar, "MAX_SCHEMA_NODES", 20)
    with pytest.raises(InvalidRequest, match="subschemas"):
        schema_grammar(wide, param="s")
    monkeypatch.setattr(grammar, "MAX_SCHEMA_CHARS", 100)
    with pytest.raises(InvalidRequest, match="larger than"):
        schema_grammar(wide, param="s")
    with pytest.raises(InvalidRequest, match="maxItems"):
        schema_grammar({"type": "array", "maxItems": 10**9}, param="s")
    with pytest.raises(InvalidRequest, match="minLength"):
        schema_grammar({"type": "string", "minLength": 10**9}, param="s")


def test_a_grammar_over_the_size_limit_is_refused(monkeypatch):
    monkeypatch.setattr(grammar, "MAX_GRAMMAR_CHARS", 200)
    with pytest.raises(InvalidRequest, match="grammar larger"):
        schema_grammar({"enum": [f"value number {i}" for i in range(50)]}, param="s")


def test_a_reference_loop_that_matches_no_text_is_refused():
    # llama.cpp would refuse the left-recursive grammar: the engine gets no sampler
    for schema in ({"$ref": "#"}, {"anyOf": [{"$ref": "#"}, {"type": "string"}]},
                   {"$ref": "#/$defs/A", "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/B"}]}, "B": {"$ref": "#/$defs/A"}}}):
        with pytest.raises(InvalidRequest, match="refers back to itself"):
            schema_grammar(schema, param="s")


def test_a_recursive_reference_terminates():
    tree = {"$ref": "#/$defs/Node", "$defs": {"Node": {"type": "object", "properties": {
        "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}}}
    assert "root ::=" in schema_grammar(tree, param="s")
    check_schema({"type": "object", "properties": {"self": {"$ref": "#"}}}, param="s")


def test_patterns_are_rewritten_into_anchored_json_safe_regexes():
    assert json_string_pattern("^\\d{3}$") == "^([0-9]{3})$"
    assert json_string_pattern("^(?:ab)+$") == "^((ab)+)$"
    assert json_string_pattern("^(?<year>\\d{4})-(?P<m>\\d\\d)$") == "^(([0-9]{4})-([0-9][0-9]))$"
    unanchored = json_string_pattern("x")
    assert unanchored.startswith("^[^") and unanchored.endswith("]*$")


# -- schemas from the OpenAI SDK and LangChain -----------------------------------

class Color(str, Enum):
    red = "red"
    blue = "blue"


class Address(BaseModel):
    street: str
    city: str = Field(description="City name")


class Person(BaseModel):
    name: str
    age: int | None = None
    kind: Literal["person"]
    color: Color = Color.red
    tags: list[str] = []
    address: Address
    previous: Address | None = None
    scores: dict[str, int] = {}


class TreeNode(BaseModel):
    label: str
    children: list[TreeNode] = []


class AgedPerson(BaseModel):
    name: str
    age: int = Field(ge=0, le=120)
    nickname: str | None = None


PERSON = Person(name='Ada "the first"', age=36, kind="person", color=Color.blue, tags=["math", "é"],
                address=Address(street="1 Main St", city="London"), previous=None, scores={"a": 1})


def test_openai_sdk_parse_schemas_convert():
    from openai.lib._parsing._completions import type_to_response_format_param

    for model in (Person, TreeNode, AgedPerson):
        response_format = type_to_response_format_param(model)
        assert response_format["json_schema"]["strict"] is True
        assert "root ::=" in response_format_grammar(response_format)


def test_openai_pydantic_function_tool_and_strict_schema_convert():
    import openai
    from openai.lib._pydantic import to_strict_json_schema

    schema = to_strict_json_schema(Person)
    assert schema["additionalProperties"] is False and "$defs" in schema
    assert "root ::=" in schema_grammar(schema, param="s")
    tool = openai.pydantic_function_tool(Person)
    assert "root ::=" in schema_grammar(tool["function"]["parameters"], param="tools[0].function.parameters")


def test_langchain_json_schema_structured_output_converts():
    function_calling = pytest.importorskip("langchain_core.utils.function_calling")

    class Movie(BaseModel):
        """A movie."""
        title: str
        year: int = Field(ge=1888, le=2100)
        genres: list[Literal["drama", "comedy"]]
        director: str | None = None

    function = function_calling.convert_to_openai_function(Movie, strict=True)
    # what langchain-openai's with_structured_output(method="json_schema") sends
    response_format = {"type": "json_schema", "json_schema": {
        "name": function["name"], "description": function["description"],
        "schema": function["parameters"], "strict": True}}
    assert "root ::=" in response_format_grammar(response_format)


# -- on llama.cpp: the grammars parse and accept exactly the schema's JSON ---------

CASES = [
    ("nested-objects",
     {"type": "object", "additionalProperties": False, "required": ["user"], "properties": {
         "user": {"type": "object", "additionalProperties": False, "required": ["name", "address"], "properties": {
             "name": {"type": "string"},
             "address": {"type": "object", "additionalProperties": False, "required": ["city"],
                         "properties": {"city": {"type": "string"}}}}}}},
     ['{"user": {"name": "Ann", "address": {"city": "Oslo"}}}', '{"user":{"name":"","address":{"city":"x"}}}'],
     ['{"user": {"name": "Ann"}}', '{"user": {"name": 1, "address": {"city": "Oslo"}}}', '{}']),
    ("array-bounds",
     {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 3},
     ["[1]", "[1, 2, 3]", "[-5,0]"],
     ["[]", "[1, 2, 3, 4]", '["1"]', "[1.5]"]),
    ("enum",
     {"type": "string", "enum": ["red", "green", "dark blue"]},
     ['"red"', '"dark blue"'],
     ['"blue"', '"Red"', "red"]),
    ("const-and-escapes",
     {"type": "object", "required": ["kind", "path"], "additionalProperties": False,
      "properties": {"kind": {"const": "v1"}, "path": {"enum": ["C:\\temp", 'say "hi"', "line\nbreak", "café"]}}},
     ['{"kind": "v1", "path": "C:\\\\temp"}', '{"kind": "v1", "path": "say \\"hi\\""}',
      '{"kind": "v1", "path": "line\\nbreak"}', '{"kind": "v1", "path": "café"}'],
     ['{"kind": "v2", "path": "C:\\\\temp"}', '{"kind": "v1", "path": "C:\\temp"}', '{"kind": "v1"}']),
    ("optional-vs-required",
     {"type": "object", "additionalProperties": False, "required": ["id"],
      "properties": {"id": {"type": "integer"}, "note": {"type": "string"}, "done": {"type": "boolean"}}},
     ['{"id": 1}', '{"id": 1, "note": "x"}', '{"id": 1, "done": true}', '{"id": 1, "note": "x", "done": false}'],
     ['{"note": "x"}', '{"id": 1, "extra": 2}', '{"id": "1"}']),
    ("anyOf-oneOf-nullable",
     {"type": "object", "additionalProperties": False, "required": ["value", "shape"], "properties": {
         "value": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
         "shape": {"oneOf": [
             {"type": "object", "additionalProperties": False, "required": ["r"], "properties": {"r": {"type": "number"}}},
             {"type": "object", "additionalProperties": False, "required": ["w", "h"],
              "properties": {"w": {"type": "number"}, "h": {"type": "number"}}}]}}},
     ['{"value": 3, "shape": {"r": 1.5}}', '{"value": null, "shape": {"w": 1, "h": 2e3}}'],
     ['{"value": "3", "shape": {"r": 1}}', '{"value": 3, "shape": {"w": 1}}', '{"value": 3, "shape": {}}']),
    ("defs-and-ref",
     {"type": "object", "additionalProperties": False, "required": ["home", "work"],
      "properties": {"home": {"$ref": "#/$defs/Place"}, "work": {"$ref": "#/$defs/Place"}},
      "$defs": {"Place": {"type": "object", "additionalProperties": False, "required": ["lat", "lon"],
                          "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}}}},
     ['{"home": {"lat": 1, "lon": 2}, "work": {"lat": -1.25, "lon": 0}}'],
     ['{"home": {"lat": 1}, "work": {"lat": 1, "lon": 2}}', '{"home": {"lat": 1, "lon": 2}}']),
    ("type-list",
     {"type": ["string", "null"], "maxLength": 4},
     ['"abcd"', "null", '""'],
     ['"abcde"', "1", "false"]),
    ("string-formats",
     {"type": "object", "additionalProperties": False, "required": ["day", "at", "id"], "properties": {
         "day": {"type": "string", "format": "date"}, "at": {"type": "string", "format": "date-time"},
         "id": {"type": "string", "format": "uuid"}}},
     ['{"day": "2024-02-29", "at": "2024-02-29T13:05:00Z", "id": "123e4567-e89b-12d3-a456-426614174000"}'],
     ['{"day": "2024-13-01", "at": "2024-02-29T13:05:00Z", "id": "123e4567-e89b-12d3-a456-426614174000"}',
      '{"day": "2024-02-29", "at": "2024-02-29", "id": "123e4567-e89b-12d3-a456-426614174000"}',
      '{"day": "2024-02-29", "at": "2024-02-29T13:05:00Z", "id": "not-a-uuid"}']),
    ("patterns",
     {"type": "object", "additionalProperties": False, "required": ["phone", "host", "code"], "properties": {
         "phone": {"type": "string", "pattern": "^\\+?\\d{1,3}[- ]\\d{3}-\\d{4}$"},
         "host": {"type": "string", "pattern": "^[a-z0-9-]+(\\.[a-z0-9-]+)*\\.(com|org)$"},
         "code": {"type": "string", "pattern": "[A-Z]{2}"}}},
     ['{"phone": "+1 555-1234", "host": "api.example.com", "code": "xxAB12"}',
      '{"phone": "44-555-1234", "host": "a.org", "code": "ZZ"}'],
     ['{"phone": "555-1234", "host": "api.example.com", "code": "AB"}',
      '{"phone": "+1 555-1234", "host": "api.example.net", "code": "AB"}',
      '{"phone": "+1 555-1234", "host": "a.org", "code": "ab"}']),
    ("dotted-pattern-stays-json",
     {"type": "string", "pattern": "^.{2,4}@.+$"},
     ['"ab@c"', '"abcd@x.y"'],
     ['"a@b"', '"ab"c@d"', '"abcde@f"']),
    ("string-length",
     {"type": "string", "minLength": 2, "maxLength": 3},
     ['"ab"', '"abc"', '"a\\n"'],
     ['"a"', '"abcd"', '"a\nb"']),
    ("additional-properties-schema",
     {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
      "additionalProperties": {"type": "string"}},
     ['{"id": 1}', '{"id": 1, "x": "y", "z": ""}'],
     ['{"id": 1, "x": 2}', '{"x": "y"}']),
    ("tuple",
     {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False},
     ['["a", 1]'],
     ['["a"]', '["a", 1, 2]', '[1, "a"]']),
    ("any-value",
     {"type": "object", "required": ["payload"], "additionalProperties": False, "properties": {"payload": {}}},
     ['{"payload": 1}', '{"payload": "x"}', '{"payload": [1, {"a": null}]}', '{"payload": {"k": true}}'],
     ['{"payload": }', '{"payload": undefined}']),
    ("allOf-objects",
     {"allOf": [{"$ref": "#/$defs/Base"},
                {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}],
      "$defs": {"Base": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}},
     ['{"a": "x", "b": 1}'],
     ['{"a": "x"}', '{"b": 1}']),
]


@pytest.mark.llama
@pytest.mark.parametrize("schema, good, bad", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_schema_grammar_accepts_valid_and_rejects_invalid_json(checker, schema, good, bad):
    jsonschema = pytest.importorskip("jsonschema")
    gbnf = response_format_grammar(_json_schema(schema))
    assert checker.parses(gbnf)
    for text in good:
        jsonschema.validate(json.loads(text), schema)  # the sample itself is right
        assert checker.accepts(gbnf, text), text
    for text in bad:
        assert not checker.accepts(gbnf, text), text


@pytest.mark.llama
def test_json_object_grammar_accepts_objects_only(checker):
    assert checker.parses(JSON_OBJECT_GRAMMAR)
    for text in ['{"a": [1, 2.5, "x", null, true]}', "{}", '{"nested": {"k": "v"}}']:
        assert checker.accepts(JSON_OBJECT_GRAMMAR, text), text
    for text in ["[1, 2]", '"text"', '{"a": 1', "{'a': 1}", "hello"]:
        assert not checker.accepts(JSON_OBJECT_GRAMMAR, text), text


@pytest.mark.llama
def test_pydantic_model_json_is_accepted_by_its_sdk_schema_grammar(checker):
    from openai.lib._parsing._completions import type_to_response_format_param

    gbnf = response_format_grammar(type_to_response_format_param(Person))
    assert checker.parses(gbnf)
    assert checker.accepts(gbnf, PERSON.model_dump_json())
    assert checker.accepts(gbnf, json.dumps(PERSON.model_dump(mode="json"), ensure_ascii=False))
    assert not checker.accepts(gbnf, PERSON.model_dump_json(exclude={"address"}))
    tree = TreeNode(label="root", children=[TreeNode(label="a", children=[TreeNode(label="b")])])
    tree_gbnf = response_format_grammar(type_to_response_format_param(TreeNode))
    assert checker.accepts(tree_gbnf, tree.model_dump_json())


# -- integer bounds: exactly the integers in range, spelled as JSON ---------------

OPEN_END = 10**16 - 1  # an open end stops at 16 digits, as the unbounded integer rule does

# (bounds, lowest, highest): the integers the bounds allow, None for an open end
INTEGER_RANGES = [
    ({"minimum": 0, "maximum": 120}, 0, 120),
    ({"minimum": 1}, 1, None),
    ({"minimum": 0}, 0, None),
    ({"minimum": -40}, -40, None),
    ({"maximum": -3}, None, -3),
    ({"maximum": 0}, None, 0),
    ({"maximum": 250}, None, 250),
    ({"minimum": -15, "maximum": 27}, -15, 27),
    ({"minimum": 5, "maximum": 5}, 5, 5),
    ({"minimum": 0, "maximum": 0}, 0, 0),
    ({"minimum": 0, "maximum": 9}, 0, 9),
    ({"minimum": 10, "maximum": 99}, 10, 99),
    ({"minimum": 7, "maximum": 1234}, 7, 1234),
    ({"minimum": 99, "maximum": 1001}, 99, 1001),
    ({"minimum": 123, "maximum": 98765}, 123, 98765),
    ({"minimum": -1000, "maximum": -1}, -1000, -1),
    ({"minimum": -999, "maximum": -100}, -999, -100),
    ({"exclusiveMinimum": 0, "exclusiveMaximum": 10}, 1, 9),
    ({"exclusiveMinimum": -5}, -4, None),
    ({"exclusiveMaximum": 0}, None, -1),
    ({"minimum": 1, "exclusiveMinimum": 3, "maximum": 100, "exclusiveMaximum": 50}, 4, 49),  # the tighter wins
    ({"minimum": -0.5, "maximum": 2.5}, 0, 2),
    ({"exclusiveMinimum": 0.5, "exclusiveMaximum": 3.0}, 1, 2),
    ({"minimum": 3, "exclusiveMinimum": True, "maximum": 8, "exclusiveMaximum": True}, 4, 7),  # draft 4, OpenAPI 3.0
    ({"minimum": 3, "exclusiveMinimum": False, "maximum": 8, "exclusiveMaximum": False}, 3, 8),
    ({"minimum": -2**63, "maximum": 2**63 - 1}, -2**63, 2**63 - 1),
    ({"minimum": 0, "maximum": 2**64 - 1}, 0, 2**64 - 1),
]


def _integers_to_try(lo: int | None, hi: int | None) -> list[int]:
    near = {v for bound in (lo, hi) if bound is not None for v in range(bound - 150, bound + 151)}
    far = {0, 1, -1, 999_999, -999_999, 123_456_789, -123_456_789, 10**15, -10**15,
           OPEN_END, -OPEN_END, OPEN_END + 1, -OPEN_END - 1, 2**63, -2**63 - 1, 10**19, -10**19}
    return sorted(near | far)


@pytest.mark.llama
@pytest.mark.parametrize("bounds, lo, hi", INTEGER_RANGES, ids=[json.dumps(r[0]) for r in INTEGER_RANGES])
def test_integer_bounds_accept_exactly_the_integers_in_range(checker, bounds, lo, hi):
    gbnf = schema_grammar({"type": "integer", **bounds}, param="s")
    assert checker.parses(gbnf)
    lowest, highest = -OPEN_END if lo is None else lo, OPEN_END if hi is None else hi
    values = _integers_to_try(lo, hi)
    wrong = [v for v in values if checker.accepts(gbnf, str(v)) != (lowest <= v <= highest)]
    assert not wrong, f"accepted iff in [{lowest}, {highest}]: wrong for {wrong[:20]}"
    # in range, but not JSON's spelling: a leading zero, '-0', '+'
    padded = [("-0" if v < 0 else "0") + str(abs(v)) for v in values if lowest <= v <= highest and v]
    padded += ["-0", "00", "+" + str(max(lowest, 1)), "-00" if lowest <= 0 else "-01"]
    assert not [text for text in padded if checker.accepts(gbnf, text)]


@pytest.mark.llama
def test_bounded_integers_inside_objects_arrays_and_unions(checker):
    schema = {"type": "object", "additionalProperties": False, "required": ["scores", "level", "delta"],
              "properties": {"scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}},
                             "level": {"type": ["integer", "null"], "exclusiveMinimum": 0},
                             "delta": {"anyOf": [{"type": "integer", "maximum": -1}, {"const": "none"}]}}}
    gbnf = schema_grammar(schema, param="s")
    assert checker.parses(gbnf)
    for text in ('{"scores": [0, 9, 3], "level": 1, "delta": -7}', '{"scores": [], "level": null, "delta": "none"}'):
        assert checker.accepts(gbnf, text), text
    for text in ('{"scores": [10], "level": 1, "delta": -7}', '{"scores": [1], "level": 0, "delta": -7}',
                 '{"scores": [1], "level": 2, "delta": 0}', '{"scores": [-1], "level": 2, "delta": -1}'):
        assert not checker.accepts(gbnf, text), text


@pytest.mark.llama
def test_openai_sdk_pydantic_field_bounds_are_enforced(checker):
    from openai.lib._pydantic import to_strict_json_schema

    class Person(BaseModel):
        name: str
        age: int = Field(ge=0, le=120)
        nickname: str | None = None

    schema = to_strict_json_schema(Person)
    assert schema["properties"]["age"]["minimum"] == 0 and schema["properties"]["age"]["maximum"] == 120
    gbnf = response_format_grammar(_json_schema(schema, name="Person"))
    assert checker.parses(gbnf)
    for person in (Person(name="Ada", age=36), Person(name="Bo", age=0, nickname="b"), Person(name="C", age=120)):
        assert checker.accepts(gbnf, person.model_dump_json()), person
    for age in ("121", "-1", "1000", "036", "-0"):
        assert not checker.accepts(gbnf, f'{{"name":"Ada","age":{age},"nickname":null}}'), age


# -- whatever the schema, a 400 or a grammar llama.cpp parses ----------------------

def _random_schema(rng, depth=0):
    keys = sorted(grammar._KNOWN) + ["minimum", "x-note", "not", "foo"]
    atoms = [None, True, False, 0, -1, 3, 5000, "string", "object", "array", "integer", "null", "#",
             "#/properties", "#/$defs/a", "^a+$", "(", "date", "email", [], {}, ["string", "null"], [{"a": 1}]]

    def value(d):
        r = rng.random()
        if d > 4 or r < 0.3:
            return rng.choice(atoms)
        if r < 0.45:
            return [value(d + 1) for _ in range(rng.randint(0, 3))]
        return _random_schema(rng, d + 1)

    return {rng.choice(keys + ["a", "b"]): value(depth) for _ in range(rng.randint(0, 4))}


def _random_outcomes(count: int, seed: int):
    import random

    rng = random.Random(seed)
    for _ in range(count):
        schema = _random_schema(rng)
        try:
            yield schema, schema_grammar(schema, param="s")
        except InvalidRequest:
            yield schema, None


def test_random_schemas_are_a_400_or_a_grammar_never_a_crash():
    outcomes = list(_random_outcomes(3000, seed=1))
    assert any(g is None for _, g in outcomes) and any(g for _, g in outcomes)


@pytest.mark.llama
def test_every_grammar_made_from_random_schemas_parses_in_llama_cpp(checker):
    for schema, gbnf in _random_outcomes(3000, seed=2):
        if gbnf is not None:
            assert checker.parses(gbnf), json.dumps(schema)
