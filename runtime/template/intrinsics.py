"""CloudFormation's intrinsic functions, resolved where a local run can know
the answer: ``Ref`` (parameters, pseudo parameters, resources), ``Fn::Sub``,
``Fn::GetAtt``, ``Fn::Join``, ``Fn::Select``, ``Fn::Split``, ``Fn::If`` with
``Conditions``, ``Fn::FindInMap`` with ``Mappings``, ``Fn::Base64``.

A resource's ``Ref`` is the name a local run gives it: an ``AWS::S3::Bucket``
its ``BucketName`` when that is a plain string, else its logical id
lower-cased (``DocsBucket`` → ``docsbucket``, a valid, stable name where
CloudFormation would invent ``stack-docsbucket-<random>``); a function its
``FunctionName``, else its
logical id; any other resource its logical id. ``Fn::GetAtt`` knows the
attributes of buckets and functions; anything else (``Fn::ImportValue``, an
IAM role's ``Arn``) has no local value and is an error naming its path.
This module resolves values; it must not read files or know what a property means.
"""
from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from runtime.errors import TemplateError
from runtime.template.parameters import ParameterValue
from runtime.template.pseudo import LOCAL_REGION, PSEUDO_PARAMETERS, URL_SUFFIX, bucket_arn, function_arn

BUCKET = "AWS::S3::Bucket"
FUNCTION = "AWS::Serverless::Function"
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")
_CONDITION_FUNCTIONS = ("Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or", "Condition", "Fn::Condition")


class _NoValue:
    """``!Ref AWS::NoValue``: the property or list item is left out."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


def is_intrinsic(value: Any) -> bool:
    if not isinstance(value, dict) or len(value) != 1:
        return False
    key = str(next(iter(value)))
    return key == "Ref" or key.startswith("Fn::")


class Resolver:
    """Resolves intrinsics against one template's parameters, conditions, mappings and resources."""

    def __init__(self, parameters: Mapping[str, ParameterValue], resources: Mapping[str, Any], *,
                 conditions: Mapping[str, Any] | None = None, mappings: Mapping[str, Any] | None = None):
        self.parameters = dict(parameters)
        self.resources = resources
        self.mappings = mappings or {}
        self._conditions = conditions or {}
        self._decided: dict[str, bool] = {}
        self._deciding: set[str] = set()

    # --- values -------------------------------------------------------------------

    def resolve(self, value: Any, where: str) -> Any:
        """``value`` with every intrinsic replaced; ``NO_VALUE`` items and keys left out."""
        if is_intrinsic(value):
            (fn, arg), = value.items()
            return self._call(fn, arg, where)
        if isinstance(value, dict):
            out = {k: self.resolve(v, f"{where}.{k}") for k, v in value.items()}
            return {k: v for k, v in out.items() if v is not NO_VALUE}
        if isinstance(value, list):
            out = [self.resolve(v, f"{where}.{i}") for i, v in enumerate(value)]
            return [v for v in out if v is not NO_VALUE]
        return value

    def _call(self, fn: str, arg: Any, where: str) -> Any:
        handler = {"Ref": self._ref, "Fn::Sub": self._sub, "Fn::GetAtt": self._get_att, "Fn::Join": self._join,
                   "Fn::Select": self._select, "Fn::Split": self._split, "Fn::If": self._if,
                   "Fn::FindInMap": self._find_in_map, "Fn::Base64": self._base64}.get(fn)
        if handler is None:
            raise TemplateError(f"{where}: {fn} cannot be resolved locally (supported: Ref, Fn::Sub, Fn::GetAtt, "
                                "Fn::Join, Fn::Select, Fn::Split, Fn::If, Fn::FindInMap, Fn::Base64)")
        return handler(arg, where)

    def _ref(self, name: Any, where: str) -> Any:
        if not isinstance(name, str):
            raise TemplateError(f"{where}: !Ref takes a name, not {name!r}")
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in PSEUDO_PARAMETERS:
            return PSEUDO_PARAMETERS[name]
        if name in self.parameters:
            return self.parameters[name]
        resource = self._resource(name, where, "!Ref")
        if resource.get("Type") == BUCKET:
            return self.bucket_name(name, where)
        if resource.get("Type") == FUNCTION:
            return self.function_name(name, where)
        return name

    def _get_att(self, arg: Any, where: str) -> str:
        if not (isinstance(arg, str) and "." in arg or isinstance(arg, list) and len(arg) == 2):
            raise TemplateError(f"{where}: !GetAtt takes Resource.Attribute, not {arg!r}")
        logical, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
        attribute = self.resolve(attribute, where)
        if not isinstance(logical, str) or not isinstance(attribute, str):
            raise TemplateError(f"{where}: !GetAtt takes Resource.Attribute, not {arg!r}")
        kind = self._resource(logical, where, "!GetAtt").get("Type")
        if kind == BUCKET:
            name = self.bucket_name(logical, where)
            known = {"Arn": bucket_arn(name), "DomainName": f"{name}.s3.{URL_SUFFIX}",
                     "RegionalDomainName": f"{name}.s3.{LOCAL_REGION}.{URL_SUFFIX}"}
        elif kind == FUNCTION:
            known = {"Arn": function_arn(self.function_name(logical, where))}
        else:
            known = {}
        if attribute not in known:
            raise TemplateError(f"{where}: !GetAtt {logical}.{attribute} has no local value "
                                f"(known for {kind}: {', '.join(known) or 'none'})")
        return known[attribute]

    def _sub(self, arg: Any, where: str) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (list(arg) + [{}])[:2]
        if not isinstance(text, str) or not isinstance(variables, dict):
            raise TemplateError(f"{where}: !Sub takes a string or [string, {{variables}}]")
        values = {k: self.resolve(v, f"{where}.{k}") for k, v in variables.items()}

        def one(match: re.Match) -> str:
            name = match.group(1).strip()
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in values:
                value = values[name]
            elif "." in name and name not in PSEUDO_PARAMETERS:
                value = self._get_att(name, where)
            else:
                value = self._ref(name, where)
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TemplateError(f"{where}: !Sub ${{{name}}} is not a string value")
            return str(value)
        return _SUB_VARIABLE.sub(one, text)

    def _join(self, arg: Any, where: str) -> str:
        delimiter, items = self._pair(arg, where, "!Join", "[delimiter, [values]]")
        return str(delimiter).join(self._strings(items, where, "!Join"))

    def _select(self, arg: Any, where: str) -> Any:
        index, items = self._pair(arg, where, "!Select", "[index, [values]]")
        if not isinstance(items, list) or not str(index).isdigit() or int(index) >= len(items):
            raise TemplateError(f"{where}: !Select index {index!r} is not in the list {items!r}")
        return items[int(index)]

    def _split(self, arg: Any, where: str) -> list[str]:
        delimiter, text = self._pair(arg, where, "!Split", "[delimiter, string]")
        if not isinstance(text, str):
            raise TemplateError(f"{where}: !Split takes a string, not {text!r}")
        return text.split(str(delimiter))

    def _if(self, arg: Any, where: str) -> Any:
        if not isinstance(arg, list) or len(arg) != 3 or not isinstance(arg[0], str):
            raise TemplateError(f"{where}: !If takes [condition name, value if true, value if false]")
        chosen = arg[1] if self.condition(arg[0], where) else arg[2]
        return self.resolve(chosen, where)

    def _find_in_map(self, arg: Any, where: str) -> Any:
        if not isinstance(arg, list) or len(arg) != 3:
            raise TemplateError(f"{where}: !FindInMap takes [map, top-level key, second-level key]")
        keys = [self.resolve(k, where) for k in arg]
        value: Any = self.mappings
        for depth, key in enumerate(keys):
            if not isinstance(value, dict) or str(key) not in value:
                path = ".".join(str(k) for k in keys[:depth + 1])
                raise TemplateError(f"{where}: !FindInMap: no Mappings.{path}")
            value = value[str(key)]
        return value

    def _base64(self, arg: Any, where: str) -> str:
        text = self.resolve(arg, where)
        if not isinstance(text, str):
            raise TemplateError(f"{where}: !Base64 takes a string")
        return base64.b64encode(text.encode()).decode()

    def _pair(self, arg: Any, where: str, fn: str, form: str) -> tuple[Any, Any]:
        if not isinstance(arg, list) or len(arg) != 2:
            raise TemplateError(f"{where}: {fn} takes {form}")
        return self.resolve(arg[0], where), self.resolve(arg[1], where)

    def _strings(self, items: Any, where: str, fn: str) -> list[str]:
        if not isinstance(items, list) or any(isinstance(v, (dict, list)) for v in items):
            raise TemplateError(f"{where}: {fn} takes a list of strings, not {items!r}")
        return [str(v) for v in items]

    # --- resources ----------------------------------------------------------------

    def _resource(self, name: str, where: str, fn: str) -> dict[str, Any]:
        resource = self.resources.get(name)
        if not isinstance(resource, dict):
            raise TemplateError(f"{where}: {fn} {name}: no parameter, pseudo parameter or resource of that name")
        if "Condition" in resource and not self.condition(resource["Condition"], f"Resources.{name}.Condition"):
            raise TemplateError(f"{where}: {fn} {name}: the resource is left out "
                                f"(its Condition {resource['Condition']} is false)")
        return resource

    def bucket_name(self, logical: str, where: str) -> str:
        # Only a plain BucketName counts: a computed one (!Sub "${AWS::StackName}-docs") would be
        # a name no one uploads to locally, so such a bucket keeps its stable lower-cased logical id.
        name = (self.resources[logical].get("Properties") or {}).get("BucketName")
        return name if isinstance(name, str) else logical.lower()

    def function_name(self, logical: str, where: str) -> str:
        props = self.resources[logical].get("Properties") or {}
        name = self.resolve(props.get("FunctionName"), f"Resources.{logical}.Properties.FunctionName")
        return name if isinstance(name, str) else logical

    def included(self, logical: str) -> bool:
        """False for a resource whose ``Condition`` is false: the stack leaves it out."""
        condition = (self.resources.get(logical) or {}).get("Condition")
        return condition is None or self.condition(condition, f"Resources.{logical}.Condition")

    # --- conditions ---------------------------------------------------------------

    def condition(self, name: Any, where: str) -> bool:
        if not isinstance(name, str) or name not in self._conditions:
            raise TemplateError(f"{where}: no condition {name!r} in Conditions "
                                f"(conditions: {', '.join(self._conditions) or 'none'})")
        if name not in self._decided:
            if name in self._deciding:
                raise TemplateError(f"Conditions.{name}: refers to itself")
            self._deciding.add(name)
            self._decided[name] = self._evaluate(self._conditions[name], f"Conditions.{name}")
            self._deciding.discard(name)
        return self._decided[name]

    def _evaluate(self, expr: Any, where: str) -> bool:
        if not isinstance(expr, dict) or len(expr) != 1 or next(iter(expr)) not in _CONDITION_FUNCTIONS:
            raise TemplateError(f"{where}: a condition is Fn::Equals, Fn::Not, Fn::And, Fn::Or or Condition")
        (fn, arg), = expr.items()
        if fn in ("Condition", "Fn::Condition"):
            return self.condition(arg, where)
        if fn == "Fn::Equals":
            if not isinstance(arg, list) or len(arg) != 2:
                raise TemplateError(f"{where}: Fn::Equals takes [value, value]")
            left, right = (self.resolve(v, where) for v in arg)
            return _comparable(left) == _comparable(right)
        if not isinstance(arg, list) or not arg or (fn == "Fn::Not" and len(arg) != 1):
            raise TemplateError(f"{where}: {fn} takes a list of conditions")
        results = [self._evaluate(item, where) for item in arg]
        return not results[0] if fn == "Fn::Not" else all(results) if fn == "Fn::And" else any(results)


def _comparable(value: Any) -> Any:
    # CloudFormation compares the values' text: !Equals [!Ref Count, 3] holds for Count "3".
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else value
