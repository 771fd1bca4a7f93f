"""``response_format`` and JSON Schemas -> GBNF grammars for llama.cpp's grammar sampler.

This module owns the one conversion from a JSON Schema to a grammar (root rule
``root``); structured outputs and forced tool calls both go through
``schema_grammar``. The conversion itself is llama-cpp-python's
``SchemaConverter``. What this module adds:

- a check of every schema node against what the converter really honours, so
  that a keyword it would drop (``multipleOf``, ``uniqueItems``, ``not``,
  ``format: email``, bounds on ``number`` ...) is a 400 naming it, never a
  constraint silently lost;
- integer bounds (``minimum``, ``exclusiveMaximum`` ...), which the converter
  drops, as a rule spelling exactly the integers in range;
- a normal form the converter handles well: annotations dropped, ``type``
  lists split into ``anyOf``, ``{}`` meaning any JSON value, every ``$ref``
  pointing at a uniquely named ``$defs`` entry (the converter names rules by
  the last path segment, so two ``Address`` definitions would collide);
- regex ``pattern`` rewriting into the subset whose GBNF llama.cpp parses
  (``\\d``, ``\\.``, ``(?:`` ...) and whose output is a valid JSON string;
- fixes for two places where the converter's output is not JSON: raw control
  characters inside strings, and backslashes in ``const``/``enum`` literals;
- bounds on schema size, depth and repetition counts, so that a hostile
  schema cannot make a grammar that exhausts the worker.

It never runs llama.cpp: whether a grammar parses is checked by the tests.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from llama_cpp.llama_grammar import (
    INVALID_RULE_CHARS_RE,
    JSON_GBNF,
    RESERVED_NAMES,
    BuiltinRule,
    SchemaConverter,
)

from runtime.errors import InvalidRequest

__all__ = [
    "JSON_OBJECT_GRAMMAR", "MAX_GRAMMAR_CHARS", "MAX_REPETITION", "MAX_SCHEMA_CHARS",
    "MAX_SCHEMA_DEPTH", "MAX_SCHEMA_NODES", "check_schema", "json_string_pattern",
    "response_format_grammar", "schema_grammar",
]

MAX_SCHEMA_CHARS = 64 * 1024  # the schema as JSON text
MAX_SCHEMA_DEPTH = 32  # nested subschemas (and regex groups)
MAX_SCHEMA_NODES = 2000  # subschemas visited, $ref targets counted once
# minItems/maxItems/minLength/maxLength and regex {m,n}: the converter spells
# repetitions out, and llama.cpp refuses a group that expands past ~2000 rules.
MAX_REPETITION = 1000
MAX_GRAMMAR_CHARS = 512 * 1024
# Integer bounds: int64 and uint64 limits fit; larger ones would only grow the grammar.
_MAX_BOUND_DIGITS = 20
# The open end of a one-sided integer range: as many digits as the converter's own integer rule.
_OPEN_END_DIGITS = 16

# llama.cpp's JSON grammar: any JSON object at the root.
JSON_OBJECT_GRAMMAR = JSON_GBNF

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "$comment", "$schema", "$id",
    "deprecated", "readOnly", "writeOnly", "discriminator", "$defs", "definitions",
})
_COMBINATORS = frozenset({"$ref", "anyOf", "oneOf", "allOf", "const", "enum"})
# Keywords of both numeric types, so that a 'type' list hands them to each; only
# integers honour them (a grammar cannot bound decimals and exponents exactly).
_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_TYPE_KEYWORDS = {
    "object": frozenset({"properties", "required", "additionalProperties"}),
    "array": frozenset({"items", "prefixItems", "minItems", "maxItems"}),
    "string": frozenset({"pattern", "format", "minLength", "maxLength"}),
    "number": _BOUNDS, "integer": _BOUNDS, "boolean": frozenset(), "null": frozenset(),
}
_KNOWN = _ANNOTATIONS | _COMBINATORS | {"type"} | frozenset().union(*_TYPE_KEYWORDS.values())
# Formats with a rule in the converter (anything else would be an unconstrained string).
_FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})


def response_format_grammar(response_format: dict | None) -> str | None:
    """The grammar for an OpenAI ``response_format``; None when output is free text."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequest("response_format must be an object", param="response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return JSON_OBJECT_GRAMMAR
    if kind == "json_schema":
        return schema_grammar(_json_schema_spec(response_format.get("json_schema")),
                              param="response_format.json_schema.schema")
    raise InvalidRequest(f"response_format.type must be 'text', 'json_object' or 'json_schema', not {kind!r}",
                         param="response_format.type")


def _json_schema_spec(spec: Any) -> dict:
    param = "response_format.json_schema"
    if not isinstance(spec, dict):
        raise InvalidRequest(f"Missing required parameter: '{param}'", param=param)
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidRequest(f"{param}.name must be 1 to 64 letters, digits, '_' or '-'", param=f"{param}.name")
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequest(f"Missing required parameter: '{param}.schema' (a JSON Schema object)",
                             param=f"{param}.schema")
    return schema


def check_schema(schema: dict, *, param: str) -> None:
    """Raise ``InvalidRequest`` if ``schema`` uses something the grammar cannot enforce."""
    _Normalizer(param).normalize(schema)


def schema_grammar(schema: dict, *, param: str, wrap: Callable[[str], str] | None = None) -> str:
    """GBNF whose root accepts JSON instances of ``schema``.

    Spellings are narrowed as llama.cpp's converter does (at most one space
    between tokens, properties in declared order, none undeclared unless
    ``additionalProperties`` asks for them); values are never narrowed past
    what the schema allows, except where a docstring below says so.

    ``wrap``, given the name of the rule for the schema, returns the root rule's
    body, for grammars that put the JSON inside other text (tool-call tags).
    Errors are ``InvalidRequest(param=param)`` with the path inside the schema.
    """
    normalizer = _Normalizer(param)
    normalized = normalizer.normalize(schema)
    converter = _Converter(normalizer.defs)
    try:
        value = converter.visit(normalized, "json")
        grammar = converter.with_root(wrap(value) if wrap else value)
    except (AssertionError, ValueError, LookupError, TypeError, RecursionError) as exc:
        raise InvalidRequest(f"{param}: unsupported schema ({_short(exc)})", param=param) from None
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise InvalidRequest(f"{param}: the schema makes a grammar larger than {MAX_GRAMMAR_CHARS} characters",
                             param=param)
    return grammar


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."


# -- the converter, with its JSON slips fixed ---------------------------------

# A JSON string character: never a raw quote, backslash or control character.
_JSON_CHAR = BuiltinRule(r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4})', [])


class _Converter(SchemaConverter):
    """llama-cpp-python's converter; literals and string characters made valid JSON."""

    def __init__(self, defs: dict[str, dict]) -> None:
        super().__init__(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        # References were resolved by the normalizer; resolve_refs() would also
        # take a "$ref" key inside a const value for a reference.
        self._refs = {f"#/$defs/{key}": target for key, target in defs.items()}

    def _format_literal(self, literal: str) -> str:
        # Always called with JSON text (a dumped const, enum value or property
        # name): keep its backslashes and non-ASCII characters as JSON has them.
        text = json.dumps(json.loads(literal), ensure_ascii=False)
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def _add_primitive(self, name: str, rule: BuiltinRule) -> str:
        return super()._add_primitive(name, _JSON_CHAR if name == "char" else rule)

    def visit(self, schema: dict, name: str) -> str:
        # The converter drops integer bounds; the normal form has them as an inclusive range.
        if schema.get("type") == "integer" and ("minimum" in schema or "maximum" in schema):
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            body = _integer_range(schema.get("minimum"), schema.get("maximum"))
            return self._add_rule(rule_name, f"({body}) space")
        return super().visit(schema, name)

    def with_root(self, body: str) -> str:
        self._add_rule("root", body)
        return self.format_grammar()


# -- schema checks and normal form --------------------------------------------

class _Normalizer:
    """Walks a schema, rejects what the converter would ignore, returns the normal form.

    Every reference in the normal form is ``#/$defs/<key>``, its target in ``defs``.
    """

    def __init__(self, param: str):
        self.param = param
        self.nodes = 0
        self.defs: dict[str, dict] = {}
        self._def_keys: dict[str, str] = {}
        # References being resolved since the last '{' or '[': meeting one of
        # them again is a loop that matches no text (left recursion to llama.cpp).
        self._bare: set[str] = set()

    def normalize(self, schema: Any) -> dict:
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{self.param} must be a JSON Schema object", param=self.param)
        if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
            raise InvalidRequest(f"{self.param}: schema larger than {MAX_SCHEMA_CHARS} characters", param=self.param)
        self._root = schema
        return self.node(schema, "", 0)

    def error(self, path: str, message: str) -> InvalidRequest:
        return InvalidRequest(f"{self.param}{path}: {message}", param=self.param)

    def node(self, schema: Any, path: str, depth: int) -> dict:
        if schema is True:
            schema = {}
        if not isinstance(schema, dict):
            raise self.error(path, "a subschema must be an object (or true)")
        self.nodes += 1
        if self.nodes > MAX_SCHEMA_NODES:
            raise self.error(path, f"schema has more than {MAX_SCHEMA_NODES} subschemas")
        if depth > MAX_SCHEMA_DEPTH:
            raise self.error(path, f"schema nested deeper than {MAX_SCHEMA_DEPTH} levels")
        for key in schema:
            if key not in _KNOWN and not key.startswith("x-"):
                raise self.error(path, f"'{key}' is not supported")
        s = {k: v for k, v in schema.items() if k not in _ANNOTATIONS and not k.startswith("x-")}
        if isinstance(s.get("type"), list):
            return self.type_union(s, path, depth)
        if "type" in s and not (isinstance(s["type"], str) and s["type"] in _TYPES):
            raise self.error(path, f"unknown type {s['type']!r}")
        if not s:
            return _any_value()
        for key in ("$ref", "anyOf", "oneOf", "allOf", "const", "enum"):
            if key in s:
                return getattr(self, _HANDLERS[key])(s, path, depth)
        return self.typed(s, path, depth)

    def only(self, s: dict, path: str, allowed: set[str] | frozenset[str], where: str) -> None:
        for key in s:
            if key not in allowed:
                raise self.error(path, f"'{key}' is not supported {where}")

    def type_union(self, s: dict, path: str, depth: int) -> dict:
        types = s["type"]
        if not types or not all(isinstance(t, str) and t in _TYPES for t in types) or len(set(types)) != len(types):
            raise self.error(path, f"'type' must list distinct JSON types, got {types!r}")
        if "anyOf" in s or "oneOf" in s:
            raise self.error(path, "a 'type' list together with 'anyOf'/'oneOf' is not supported")
        generic = {k: v for k, v in s.items() if k in _COMBINATORS}
        branches = [{**generic, **{k: v for k, v in s.items() if k in _TYPE_KEYWORDS[t]}, "type": t}
                    for t in types]
        for key in s:
            if key not in generic and key != "type" and not any(key in _TYPE_KEYWORDS[t] for t in types):
                raise self.error(path, f"'{key}' does not apply to types {types!r}")
        if len(branches) == 1:
            return self.node(branches[0], path, depth)
        return {"anyOf": [self.node(b, path, depth + 1) for b in branches]}

    def ref(self, s: dict, path: str, depth: int) -> dict:
        self.only(s, path, {"$ref"}, "next to '$ref'")
        ref = s["$ref"]
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise self.error(path, f"$ref {ref!r} is not supported (only local '#/...' references)")
        if ref in self._bare:
            raise self.error(path, f"$ref {ref!r} refers back to itself before any value starts")
        if ref not in self._def_keys:
            target = self.resolve(ref, path)
            key = f"ref{len(self._def_keys)}-{INVALID_RULE_CHARS_RE.sub('-', ref.rsplit('/', 1)[-1])}"
            self._def_keys[ref] = key
            self.defs[key] = {}  # registered first, so that a recursive reference ends here
            self._bare.add(ref)
            self.defs[key] = self.node(target, "." + ref[2:].replace("/", "."), depth + 1)
            self._bare.discard(ref)
        return {"$ref": f"#/$defs/{self._def_keys[ref]}"}

    def resolve(self, ref: str, path: str) -> Any:
        target: Any = self._root
        for part in ref[2:].split("/") if ref != "#" else []:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            elif isinstance(target, dict) and part in target:
                target = target[part]
            else:
                raise self.error(path, f"$ref {ref!r} does not resolve")
        return target

    def union(self, s: dict, path: str, depth: int) -> dict:
        if "anyOf" in s and "oneOf" in s:
            raise self.error(path, "'anyOf' together with 'oneOf' is not supported")
        key = "anyOf" if "anyOf" in s else "oneOf"
        self.only(s, path, {key}, f"next to '{key}'")
        branches = s[key]
        if not isinstance(branches, list) or not branches:
            raise self.error(path, f"'{key}' must be a non-empty array")
        # oneOf is treated as anyOf: generated values match at least one branch.
        return {"anyOf": [self.node(b, f"{path}.{key}[{i}]", depth + 1) for i, b in enumerate(branches)]}

    def all_of(self, s: dict, path: str, depth: int) -> dict:
        """allOf of object schemas is merged into one object; anything else is refused."""
        self.only(s, path, {"allOf", "type"}, "next to 'allOf'")
        parts = s["allOf"]
        if not isinstance(parts, list) or not parts:
            raise self.error(path, "'allOf' must be a non-empty array")
        if len(parts) == 1:
            return self.node(parts[0], f"{path}.allOf[0]", depth + 1)
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for i, part in enumerate(parts):
            part = self.object_part(part, f"{path}.allOf[{i}]")
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += [r for r in part.get("required", []) if r not in merged["required"]]
        return self.node(merged, path, depth)

    def object_part(self, part: Any, path: str) -> dict:
        """An allOf member (references followed) that is a plain object schema."""
        for _ in range(MAX_SCHEMA_DEPTH):
            if not (isinstance(part, dict) and set(part) - _ANNOTATIONS == {"$ref"} and isinstance(part["$ref"], str)):
                break
            part = self.resolve(part["$ref"], path)
        keys = set(part) - _ANNOTATIONS if isinstance(part, dict) else {"?"}
        if not keys <= {"type", "properties", "required", "additionalProperties"} \
                or part.get("type", "object") != "object" or part.get("additionalProperties", False) is not False \
                or not isinstance(part.get("properties", {}), dict) or not isinstance(part.get("required", []), list):
            raise self.error(path, "'allOf' is only supported for object schemas with 'properties' and 'required'")
        return part

    def const(self, s: dict, path: str, depth: int) -> dict:
        self.only(s, path, {"const", "enum", "type"}, "next to 'const'")
        if "enum" in s and s["const"] not in (s["enum"] if isinstance(s["enum"], list) else []):
            raise self.error(path, "'const' is not one of 'enum'")
        return {"const": s["const"]}

    def enum(self, s: dict, path: str, depth: int) -> dict:
        self.only(s, path, {"enum", "type"}, "next to 'enum'")
        values = s["enum"]
        if not isinstance(values, list) or not values:
            raise self.error(path, "'enum' must be a non-empty array")
        if "type" in s:
            values = [v for v in values if _is_type(v, s["type"])]
            if not values:
                raise self.error(path, f"no 'enum' value is of type {s['type']!r}")
        return {"enum": values}

    def typed(self, s: dict, path: str, depth: int) -> dict:
        kind = s.get("type") or self.infer_type(s, path)
        self.only(s, path, {"type"} | _TYPE_KEYWORDS[kind], f"for type '{kind}'")
        if kind in ("object", "array"):
            bare, self._bare = self._bare, set()  # its values come after a '{' or '['
            try:
                return self.object(s, path, depth) if kind == "object" else self.array(s, path, depth)
            finally:
                self._bare = bare
        if kind == "string":
            return self.string(s, path)
        if kind == "integer":
            return self.integer(s, path)
        for key in s:
            if key in _BOUNDS:  # only reached for 'number'
                raise self.error(path, f"'{key}' is not supported for type '{kind}' (only integers can be bounded)")
        return {"type": kind}

    def infer_type(self, s: dict, path: str) -> str:
        kinds = {t for t, keys in _TYPE_KEYWORDS.items() if keys & s.keys()}
        if kinds == {"number", "integer"}:  # bounds alone apply to any number: refused as for 'number'
            return "number"
        if len(kinds) != 1:
            raise self.error(path, "a schema without 'type' must use the keywords of one type only")
        return kinds.pop()

    def object(self, s: dict, path: str, depth: int) -> dict:
        properties = s.get("properties", {})
        required = s.get("required", [])
        extra = s.get("additionalProperties", True)
        if not isinstance(properties, dict) or not isinstance(required, list) \
                or not all(isinstance(name, str) for name in required):
            raise self.error(path, "'properties' must be an object and 'required' an array of names")
        for name in required:
            if name not in properties:
                raise self.error(path, f"required property {name!r} is not declared in 'properties'")
        if not properties and extra is True:
            return {"type": "object"}
        out: dict[str, Any] = {"type": "object", "properties": {
            name: self.node(sub, f"{path}.properties.{name}", depth + 1) for name, sub in properties.items()}}
        if required:
            out["required"] = list(required)
        # Without additionalProperties the converter allows no extra keys, a
        # subset of what the schema allows; true becomes "any value".
        if extra is not False and "additionalProperties" in s:
            out["additionalProperties"] = self.node(extra, f"{path}.additionalProperties", depth + 1)
        elif extra is False:
            out["additionalProperties"] = False
        return out

    def array(self, s: dict, path: str, depth: int) -> dict:
        items, prefix = s.get("items"), s.get("prefixItems")
        if isinstance(items, list):  # the draft-07 tuple form
            items, prefix = None, items
        if prefix is not None:
            if items not in (None, False) or "minItems" in s or "maxItems" in s:
                raise self.error(path, "'prefixItems' is only supported as a fixed tuple "
                                       "(no 'items', 'minItems' or 'maxItems')")
            if not isinstance(prefix, list):
                raise self.error(path, "'prefixItems' must be an array")
            return {"type": "array", "prefixItems": [
                self.node(p, f"{path}.prefixItems[{i}]", depth + 1) for i, p in enumerate(prefix)]}
        if items is False:
            raise self.error(path, "'items': false is not supported")
        lo, hi = self.bounds(s, "minItems", "maxItems", path)
        if items is None and lo == 0 and hi is None:
            return {"type": "array"}
        out = {"type": "array", "items": self.node({} if items is None else items, f"{path}.items", depth + 1)}
        if lo:
            out["minItems"] = lo
        if hi is not None:
            out["maxItems"] = hi
        return out

    def string(self, s: dict, path: str) -> dict:
        present = [k for k in ("pattern", "format") if k in s]
        if len(present) > 1 or (present and ("minLength" in s or "maxLength" in s)):
            raise self.error(path, f"{' and '.join(present + [k for k in ('minLength', 'maxLength') if k in s])} "
                                   "are not supported together")
        if "format" in s:
            if not isinstance(s["format"], str) or s["format"] not in _FORMATS:
                raise self.error(path, f"format {s['format']!r} is not supported "
                                       f"(supported: {', '.join(sorted(_FORMATS))})")
            return {"type": "string", "format": s["format"]}
        if "pattern" in s:
            if not isinstance(s["pattern"], str):
                raise self.error(path, "'pattern' must be a string")
            try:
                return {"type": "string", "pattern": json_string_pattern(s["pattern"])}
            except ValueError as exc:
                raise self.error(path, f"pattern {s['pattern']!r}: {exc}") from None
        lo, hi = self.bounds(s, "minLength", "maxLength", path)
        if lo == 0 and hi is None:
            return {"type": "string"}
        return {"type": "string", "minLength": lo, **({"maxLength": hi} if hi is not None else {})}

    def integer(self, s: dict, path: str) -> dict:
        """The bounds folded into one inclusive range: ``minimum``/``maximum``, each optional."""
        lows = [self.integer_bound(s, key, path) for key in ("minimum", "exclusiveMinimum") if key in s]
        highs = [self.integer_bound(s, key, path) for key in ("maximum", "exclusiveMaximum") if key in s]
        lo = max((b for b in lows if b is not None), default=None)
        hi = min((b for b in highs if b is not None), default=None)
        if lo is not None and hi is not None and lo > hi:
            raise self.error(path, "no integer lies within the bounds")
        return {"type": "integer", **({"minimum": lo} if lo is not None else {}),
                **({"maximum": hi} if hi is not None else {})}

    def integer_bound(self, s: dict, key: str, path: str) -> int | None:
        """The inclusive integer bound that ``key`` sets; None for a draft-4 exclusive flag."""
        value, inclusive_key = s[key], key.removeprefix("exclusive").lower()
        if isinstance(value, bool) and key != inclusive_key:  # draft 4 and OpenAPI 3.0: a flag on minimum/maximum
            if value and inclusive_key not in s:
                raise self.error(path, f"'{key}': true needs '{inclusive_key}'")
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(path, f"'{key}' must be a number")
        if not abs(value) < 10 ** _MAX_BOUND_DIGITS:  # also NaN and the infinities
            raise self.error(path, f"'{key}' must be finite, of at most {_MAX_BOUND_DIGITS} digits")
        exclusive = key != inclusive_key or s.get("exclusive" + key.capitalize()) is True
        if inclusive_key == "minimum":
            return math.floor(value) + 1 if exclusive else math.ceil(value)
        return math.ceil(value) - 1 if exclusive else math.floor(value)

    def bounds(self, s: dict, low: str, high: str, path: str) -> tuple[int, int | None]:
        lo, hi = s.get(low, 0), s.get(high)
        for key, value in ((low, lo), (high, hi)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise self.error(path, f"'{key}' must be a non-negative integer")
            if value is not None and value > MAX_REPETITION:
                raise self.error(path, f"'{key}' above {MAX_REPETITION} is not supported")
        if hi is not None and lo > hi:
            raise self.error(path, f"'{low}' is greater than '{high}'")
        return lo, hi


_HANDLERS = {"$ref": "ref", "anyOf": "union", "oneOf": "union", "allOf": "all_of",
             "const": "const", "enum": "enum"}


def _any_value() -> dict:
    """``{}``: the converter alone would read it as "any object"."""
    return {"anyOf": [{"type": t} for t in _TYPES if t != "integer"]}


def _is_type(value: Any, kind: Any) -> bool:
    kinds = kind if isinstance(kind, list) else [kind]
    checks = {
        "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool) or isinstance(v, float) and v.is_integer(),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }
    return any(checks.get(k, lambda v: False)(value) for k in kinds)


# -- integer ranges -----------------------------------------------------------
#
# JSON spells an integer with an optional '-' and no leading zeros. The
# magnitudes in range are split by digit count, and a run of equal-length
# numbers by its first differing digit, as llama.cpp's C++ converter does
# (build_min_max_int); unlike it, '-0' is never spelled.

def _integer_range(lo: int | None, hi: int | None) -> str:
    """GBNF alternatives spelling exactly the integers from ``lo`` to ``hi`` (None: open).

    An open end stops at 16 digits (or the other bound's digit count if
    longer), as the converter's unbounded integer rule does.
    """
    digits = max([_OPEN_END_DIGITS] + [len(str(abs(b))) for b in (lo, hi) if b is not None])
    lo = -(10 ** digits - 1) if lo is None else lo
    hi = 10 ** digits - 1 if hi is None else hi
    if lo > hi:
        raise ValueError(f"empty integer range [{lo}, {hi}]")
    alternatives = []
    if lo < 0:
        alternatives.append(f'"-" ({_magnitudes(max(1, -hi), -lo)})')
    if hi >= 0:
        alternatives.append(_magnitudes(max(0, lo), hi))
    return " | ".join(alternatives)


def _magnitudes(lo: int, hi: int) -> str:
    """GBNF for ``lo`` <= n <= ``hi`` (0 <= lo), one alternative per digit count."""
    alternatives, full = [], []
    for length in range(len(str(lo)), len(str(hi)) + 1):
        first, last = max(lo, 10 ** (length - 1) if length > 1 else 0), min(hi, 10 ** length - 1)
        if length > 1 and first == 10 ** (length - 1) and last == 10 ** length - 1:
            full.append(length)  # every number of this length: merged below
        else:
            alternatives.append(_same_length(str(first), str(last)))
    if full:
        alternatives.append(f"[1-9] {_any_digits(full[0] - 1, full[-1] - 1)}")
    return " | ".join(alternatives)


def _same_length(lo: str, hi: str) -> str:
    """GBNF for the digit strings from ``lo`` to ``hi``, both of the same length."""
    common = next((i for i, (a, b) in enumerate(zip(lo, hi)) if a != b), len(lo))
    prefix = f'"{lo[:common]}" ' if common else ""
    if common == len(lo):
        return prefix.rstrip()
    low, high, rest = lo[common], hi[common], len(lo) - common - 1
    if not rest:
        return prefix + _digit_class(low, high)
    zeros, nines = "0" * rest, "9" * rest
    lo_rest, hi_rest = lo[common + 1:], hi[common + 1:]
    # the leading digits whose every continuation is in range
    full_low = low if lo_rest == zeros else chr(ord(low) + 1)
    full_high = high if hi_rest == nines else chr(ord(high) - 1)
    parts = []
    if lo_rest != zeros:
        parts.append(_same_length(low + lo_rest, low + nines))
    if full_low <= full_high:
        parts.append(f"{_digit_class(full_low, full_high)} {_any_digits(rest, rest)}")
    if hi_rest != nines:
        parts.append(_same_length(high + zeros, high + hi_rest))
    body = " | ".join(parts)
    return f"{prefix}({body})" if prefix and len(parts) > 1 else prefix + body


def _digit_class(first: str, last: str) -> str:
    return f"[{first}]" if first == last else f"[{first}-{last}]"


def _any_digits(least: int, most: int) -> str:
    if least == most:
        return "[0-9]" if least == 1 else f"[0-9]{{{least}}}"
    return f"[0-9]{{{least},{most}}}"


# -- regex patterns -----------------------------------------------------------
#
# JSON Schema patterns are ECMA-262 regexes over the decoded string; the
# converter copies a pattern almost verbatim into GBNF, which matches the JSON
# text. So the pattern is rewritten first: escapes llama.cpp's GBNF lacks
# (\d, \., \/ ...) become classes, characters JSON must escape become their
# escaped spelling, '.' and negated classes stop matching '"', '\' and control
# characters, and an unanchored pattern gets '.*' on its open ends.

_JSON_UNSAFE = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]
_SHORTHANDS = {
    "d": [(0x30, 0x39)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "s": [(0x20, 0x20)],  # a space: tabs and newlines would need JSON escapes
}
_CONTROL_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
_QUANTIFIER = re.compile(r"\{(\d+)(,(\d*))?\}")
_NAMED_GROUP = re.compile(r"\?P?<[A-Za-z_][A-Za-z0-9_]*>")


def json_string_pattern(pattern: str) -> str:
    """``pattern`` rewritten for the converter, anchored, matching JSON-escaped text.

    Raises ValueError for what cannot be expressed (lookarounds, backreferences,
    word boundaries, anchors in the middle, unicode property classes).
    """
    body, start, end = pattern, True, True
    if body.startswith("^"):
        body = body[1:]
    else:
        start = False
    if body.endswith("$") and not _escaped(body, len(body) - 1):
        body = body[:-1]
    else:
        end = False
    parts = _RegexRewriter(body).rewrite()
    anything = f"{_negated_class([])}*"
    return "^" + ("" if start else anything) + f"({parts})" + ("" if end else anything) + "$"


def _escaped(text: str, index: int) -> bool:
    backslashes = len(text[:index]) - len(text[:index].rstrip("\\"))
    return backslashes % 2 == 1


class _RegexRewriter:
    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0
        self.depth = 0

    def rewrite(self) -> str:
        out: list[str] = []
        can_repeat = False
        while self.i < len(self.p):
            quantifier = self.p[self.i] in "*+?" or _QUANTIFIER.match(self.p, self.i) is not None
            if quantifier and not can_repeat:
                raise ValueError("nothing to repeat")
            out.append(self.token())
            can_repeat = not quantifier and out[-1] not in ("(", "|")
        if self.depth:
            raise ValueError("unbalanced parentheses")
        return "".join(out)

    def token(self) -> str:
        c = self.p[self.i]
        self.i += 1
        if c == "\\":
            return self.escape()
        if c == "[":
            return self.char_class()
        if c == "(":
            return self.group_open()
        if c == ")":
            self.depth -= 1
            if self.depth < 0:
                raise ValueError("unbalanced parentheses")
            return ")"
        if c in "*+?":
            self.skip_lazy()
            return c
        if c == "{":
            return self.repeat()
        if c == ".":
            return _negated_class([])
        if c in "^$":
            raise ValueError("'^' and '$' are only supported at the start and end")
        if c == "|":
            return "|"
        return _literal(c)

    def skip_lazy(self) -> None:
        if self.i < len(self.p) and self.p[self.i] == "?":
            self.i += 1  # a lazy quantifier matches the same strings

    def repeat(self) -> str:
        m = _QUANTIFIER.match(self.p, self.i - 1)
        if not m:
            return _literal("{")
        self.i = m.end()
        lo, hi = int(m.group(1)), (int(m.group(3)) if m.group(3) else None)
        if lo > MAX_REPETITION or (hi is not None and (hi > MAX_REPETITION or hi < lo)):
            raise ValueError(f"repetition {m.group(0)} is not supported (at most {MAX_REPETITION})")
        self.skip_lazy()
        return m.group(0)

    def group_open(self) -> str:
        self.depth += 1
        if self.depth > MAX_SCHEMA_DEPTH:
            raise ValueError("groups nested too deeply")
        named = _NAMED_GROUP.match(self.p, self.i)
        if self.p.startswith("?:", self.i):
            self.i += 2
        elif named:  # capture names mean nothing to a grammar
            self.i = named.end()
        elif self.p.startswith("?", self.i):
            raise ValueError("lookarounds and inline flags are not supported")
        return "("

    def escape(self) -> str:
        if self.i >= len(self.p):
            raise ValueError("trailing backslash")
        c = self.p[self.i]
        self.i += 1
        if c in _SHORTHANDS:
            return _class(_SHORTHANDS[c])
        if c.lower() in _SHORTHANDS:
            return _negated_class(_SHORTHANDS[c.lower()])
        return _literal(self.escaped_char(c))

    def escaped_char(self, c: str) -> str:
        """The character an escape outside the shorthands stands for."""
        if c in _CONTROL_ESCAPES:
            return _CONTROL_ESCAPES[c]
        if c in "xu":
            size = 2 if c == "x" else 4
            digits = self.p[self.i:self.i + size]
            if len(digits) != size or not all(ch in "0123456789abcdefABCDEF" for ch in digits):
                raise ValueError(f"bad \\{c} escape")
            self.i += size
            return chr(int(digits, 16))
        if c.isalnum():
            raise ValueError(f"escape \\{c} is not supported")
        return c

    def char_class(self) -> str:
        negate = self.p.startswith("^", self.i)
        self.i += negate
        ranges: list[tuple[int, int]] = []
        while self.i < len(self.p) and self.p[self.i] != "]":
            lo = self.class_atom(ranges)
            if lo is None:
                continue
            if self.p.startswith("-", self.i) and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                self.i += 1
                hi = self.class_atom(ranges)
                if hi is None or hi < lo:
                    raise ValueError("bad range in character class")
                ranges.append((lo, hi))
            else:
                ranges.append((lo, lo))
        if self.i >= len(self.p):
            raise ValueError("unterminated character class")
        self.i += 1
        return _negated_class(ranges) if negate else _class(ranges)

    def class_atom(self, ranges: list[tuple[int, int]]) -> int | None:
        """One class member: its code point, or None when it was a shorthand added to ``ranges``."""
        c = self.p[self.i]
        self.i += 1
        if c != "\\":
            return ord(c)
        if self.i >= len(self.p):
            raise ValueError("trailing backslash")
        e = self.p[self.i]
        self.i += 1
        if e in _SHORTHANDS:
            ranges.extend(_SHORTHANDS[e])
            return None
        if e.lower() in _SHORTHANDS:
            raise ValueError(f"\\{e} inside a character class is not supported")
        if e == "b":
            return 0x08
        return ord(self.escaped_char(e))


def _literal(c: str) -> str:
    """A regex unit for the converter matching ``c`` as it appears in JSON text."""
    if ord(c) < 0x20 or c in '"\\':
        # JSON spells it with a backslash: a regex-escaped backslash, then the rest.
        escaped = json.dumps(c)[1:-1]
        return "(\\\\" + escaped[1:].replace("\\", "\\\\") + ")"
    if c.isalnum() or c in " !#%&',-/:;<=>@_`~" or ord(c) > 0x7F:
        return c
    return f"[{_class_char(ord(c))}]"


def _class_char(code: int) -> str:
    if chr(code).isascii() and chr(code).isalnum():
        return chr(code)
    if code <= 0xFF:
        return f"\\x{code:02X}"
    return f"\\u{code:04X}" if code <= 0xFFFF else f"\\U{code:08X}"


def _class(ranges: list[tuple[int, int]]) -> str:
    safe = _subtract(ranges, _JSON_UNSAFE)
    if not safe:
        raise ValueError("a character class only matches characters that JSON escapes")
    return "[" + "".join(_range_text(lo, hi) for lo, hi in safe) + "]"


def _negated_class(ranges: list[tuple[int, int]]) -> str:
    return "[^" + "".join(_range_text(lo, hi) for lo, hi in sorted(ranges + _JSON_UNSAFE)) + "]"


def _range_text(lo: int, hi: int) -> str:
    return _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}"


def _subtract(ranges: list[tuple[int, int]], remove: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = sorted(ranges)
    for r_lo, r_hi in remove:
        out = [piece for lo, hi in out
               for piece in ((lo, min(hi, r_lo - 1)), (max(lo, r_hi + 1), hi)) if piece[0] <= piece[1]]
    return out
