"""The one template reader: SAM's Globals merge, Parameters with overrides,
intrinsics and Conditions resolved where a local run can know them, typed
event specs, and every mistake reported at load time with its path."""
from __future__ import annotations

import pytest
import yaml

from runtime.template import (
    HttpEvent,
    S3Event,
    ScheduleEvent,
    TemplateError,
    load_template,
    parse_parameter_overrides,
    parse_template,
)


def function(props: dict | None = None, **extra) -> dict:
    """An AWS::Serverless::Function resource with ``props`` over the required ones."""
    return {"Type": "AWS::Serverless::Function",
            "Properties": {"CodeUri": "src/", "Handler": "app.handler", **(props or {})}, **extra}


def template(resources: dict, **sections) -> dict:
    return {"Transform": "AWS::Serverless-2016-10-31", "Resources": resources, **sections}


def env_of(doc: dict, name: str = "Fn", overrides: dict | None = None) -> dict[str, str]:
    return parse_template(doc, parameter_overrides=overrides).function(name).environment


# --- Globals ----------------------------------------------------------------------

def test_globals_event_invoke_config_merges_with_the_functions_own():
    doc = template({"Own": function({"EventInvokeConfig": {"MaximumRetryAttempts": 0}}),
                    "Moved": function({"EventInvokeConfig": {"DestinationConfig": {"OnFailure": {
                        "Type": "S3Bucket", "Destination": "s3://moved/failed"}}}}),
                    "Plain": function()},
                   Globals={"Function": {"EventInvokeConfig": {
                       "MaximumEventAgeInSeconds": 600,
                       "DestinationConfig": {"OnFailure": {"Type": "S3", "Destination": {"Fn::GetAtt": "Dlq.Arn"}}}}}})
    doc["Resources"]["Dlq"] = {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "dead-letters"}}
    functions = parse_template(doc).functions
    own = functions["Own"].invoke_config
    assert (own.maximum_retry_attempts, own.maximum_event_age_s, own.on_failure) == (0, 600, "s3://dead-letters")
    assert functions["Moved"].invoke_config.on_failure == "s3://moved/failed"  # the function's own wins
    assert functions["Moved"].invoke_config.maximum_event_age_s == 600
    plain = functions["Plain"].invoke_config
    assert (plain.maximum_retry_attempts, plain.on_failure) == (2, "s3://dead-letters")


def test_globals_merge_maps_key_by_key_lists_additively_and_primitives_replaced(tmp_path):
    doc = template({"Fn": function({"Timeout": 9, "Environment": {"Variables": {"B": "own", "C": "c"}},
                                    "Layers": ["own-layer/"]}),
                    "Other": function()},
                   Globals={"Function": {"Timeout": 30, "MemorySize": 512, "Layers": ["shared-layer/"],
                                         "Environment": {"Variables": {"A": "global", "B": "global"}}}})
    spec = parse_template(doc, tmp_path / "template.yaml").function("Fn")
    assert spec.environment == {"A": "global", "B": "own", "C": "c"}
    assert [p.name for p in spec.layers] == ["shared-layer", "own-layer"]
    assert (spec.timeout, spec.memory_size) == (9, 512)
    assert parse_template(doc).function("Other").timeout == 30


def test_an_intrinsic_in_a_function_replaces_the_globals_map():
    doc = template({"Fn": function({"Environment": {"Fn::If": ["Never", {"Variables": {"X": "1"}},
                                                                {"Variables": {"Y": "2"}}]}})},
                   Conditions={"Never": {"Fn::Equals": ["a", "b"]}},
                   Globals={"Function": {"Environment": {"Variables": {"A": "global"}}}})
    assert env_of(doc) == {"Y": "2"}  # SAM treats an intrinsic as a primitive: no merge


def test_globals_refuse_what_belongs_to_one_function():
    doc = template({"Fn": function()}, Globals={"Function": {"Events": {}}})
    with pytest.raises(TemplateError, match=r"^Globals\.Function\.Events: "):
        parse_template(doc)


# --- Parameters -------------------------------------------------------------------

PARAMETERS = {
    "Stage": {"Type": "String", "Default": "dev", "AllowedValues": ["dev", "prod"]},
    "Workers": {"Type": "Number", "Default": 2, "MinValue": 1, "MaxValue": 8},
    "Names": {"Type": "CommaDelimitedList", "Default": "a, b,c"},
    "Ports": {"Type": "List<Number>", "Default": "80,443"},
    "Token": {"Type": "String", "NoEcho": True, "AllowedPattern": "[a-z]+"},
}
PARAM_ENV = {"STAGE": {"Ref": "Stage"}, "WORKERS": {"Ref": "Workers"},
             "NAMES": {"Fn::Join": ["|", {"Ref": "Names"}]}, "PORT": {"Fn::Select": [1, {"Ref": "Ports"}]},
             "TOKEN": {"Ref": "Token"}}


def param_doc() -> dict:
    return template({"Fn": function({"Environment": {"Variables": PARAM_ENV}})}, Parameters=PARAMETERS)


def test_parameters_take_their_defaults_and_overrides():
    assert env_of(param_doc(), overrides={"Token": "abc"}) == {
        "STAGE": "dev", "WORKERS": "2", "NAMES": "a|b|c", "PORT": "443", "TOKEN": "abc"}
    env = env_of(param_doc(), overrides={"Token": "xyz", "Stage": "prod", "Workers": "8", "Names": "x"})
    assert (env["STAGE"], env["WORKERS"], env["NAMES"]) == ("prod", "8", "x")


@pytest.mark.parametrize("overrides, message", [
    ({}, r"^Parameters\.Token: no value"),
    ({"Token": "abc", "Stage": "test"}, r"^Parameters\.Stage: 'test' is not one of the AllowedValues \(dev, prod\)"),
    ({"Token": "abc", "Workers": "9"}, r"^Parameters\.Workers: '9' is above its MaxValue 8"),
    ({"Token": "abc", "Workers": "two"}, r"^Parameters\.Workers: 'two' is not a number"),
    ({"Token": "abc", "Ports": "80,http"}, r"^Parameters\.Ports: '80,http' is not a number"),
    ({"Token": "ABC"}, r"^Parameters\.Token: \*\*\*\* does not match the AllowedPattern"),
    ({"Token": "abc", "Stages": "dev"}, r"^Parameters\.Stages: given in parameter-overrides but not declared"),
])
def test_parameter_mistakes_name_the_parameter(overrides, message):
    with pytest.raises(TemplateError, match=message):
        parse_template(param_doc(), parameter_overrides=overrides)


def test_a_noecho_value_never_appears_in_an_error():
    with pytest.raises(TemplateError) as err:
        parse_template(param_doc(), parameter_overrides={"Token": "SECRET"})
    assert "SECRET" not in str(err.value)


@pytest.mark.parametrize("values, expected", [
    (["Stage=prod", "Token=abc"], {"Stage": "prod", "Token": "abc"}),
    (["Stage=prod Token=abc"], {"Stage": "prod", "Token": "abc"}),
    (["ParameterKey=Stage,ParameterValue=prod", "ParameterKey=Names,ParameterValue=a,b"],
     {"Stage": "prod", "Names": "a,b"}),
    (['Greeting="hello world" Empty='], {"Greeting": "hello world", "Empty": ""}),
])
def test_parameter_overrides_in_sam_cli_forms(values, expected):
    assert parse_parameter_overrides(values) == expected


def test_a_parameter_override_without_a_value_is_an_error():
    with pytest.raises(TemplateError, match="parameter-overrides: 'Stage' is not Key=Value"):
        parse_parameter_overrides(["Stage"])


# --- intrinsics in Environment ----------------------------------------------------

def resources_with(env: dict) -> dict:
    return {"Fn": function({"Environment": {"Variables": env}}),
            "Docs": {"Type": "AWS::S3::Bucket"},
            # a computed BucketName is not what a local run calls the bucket: its logical id is
            "Named": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": {"Fn::Sub": "${AWS::StackName}-named"}}},
            "Plain": {"Type": "AWS::S3::Bucket", "Properties": {"BucketName": "plain-name"}},
            "Worker": function({"FunctionName": "worker-fn"}),
            "Table": {"Type": "AWS::DynamoDB::Table"}}


def test_ref_sub_and_getatt_reach_the_functions_environment():
    env = {"GREETING": {"Ref": "Greeting"}, "REGION": {"Ref": "AWS::Region"}, "ACCOUNT": {"Ref": "AWS::AccountId"},
           "PARTITION": {"Ref": "AWS::Partition"}, "SUFFIX": {"Ref": "AWS::URLSuffix"},
           "DOCS": {"Ref": "Docs"}, "NAMED": {"Ref": "Named"}, "PLAIN": {"Ref": "Plain"}, "WORKER": {"Ref": "Worker"}, "TABLE": {"Ref": "Table"},
           "DOCS_ARN": {"Fn::GetAtt": "Docs.Arn"}, "DOCS_HOST": {"Fn::GetAtt": ["Docs", "DomainName"]},
           "WORKER_ARN": {"Fn::GetAtt": "Worker.Arn"},
           "SUB": {"Fn::Sub": "${Greeting} from ${AWS::StackName} in ${AWS::Region}: ${Docs.Arn} ${!Literal}"},
           "SUB_VARS": {"Fn::Sub": ["${Who}@${Docs}", {"Who": {"Ref": "Greeting"}}]},
           "GONE": {"Ref": "AWS::NoValue"}}
    doc = template(resources_with(env), Parameters={"Greeting": {"Type": "String", "Default": "hi"}})
    assert env_of(doc) == {
        "GREETING": "hi", "REGION": "us-east-1", "ACCOUNT": "123456789012", "PARTITION": "aws",
        "SUFFIX": "amazonaws.com", "DOCS": "docs", "NAMED": "named", "PLAIN": "plain-name", "WORKER": "worker-fn", "TABLE": "Table",
        "DOCS_ARN": "arn:aws:s3:::docs", "DOCS_HOST": "docs.s3.amazonaws.com",
        "WORKER_ARN": "arn:aws:lambda:us-east-1:123456789012:function:worker-fn",
        "SUB": "hi from local in us-east-1: arn:aws:s3:::docs ${Literal}", "SUB_VARS": "hi@docs"}


def test_join_select_split_findinmap_and_if_with_conditions():
    env = {"JOINED": {"Fn::Join": ["-", ["a", {"Ref": "Stage"}]]},
           "SECOND": {"Fn::Select": ["1", {"Fn::Split": [",", "x,y,z"]}]},
           "SIZE": {"Fn::FindInMap": ["Sizes", {"Ref": "Stage"}, "Memory"]},
           "MODE": {"Fn::If": ["IsProd", "fast", "cheap"]},
           "BOTH": {"Fn::If": ["ProdAndEast", "yes", "no"]},
           "EITHER": {"Fn::If": ["DevOrProd", "yes", "no"]},
           "ONLY_DEV": {"Fn::If": ["IsProd", {"Ref": "AWS::NoValue"}, "dev"]}}
    conditions = {"IsProd": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]},
                  "IsEast": {"Fn::Equals": [{"Ref": "AWS::Region"}, "us-east-1"]},
                  "ProdAndEast": {"Fn::And": [{"Condition": "IsProd"}, {"Condition": "IsEast"}]},
                  "DevOrProd": {"Fn::Or": [{"Fn::Not": [{"Condition": "IsProd"}]}, {"Condition": "IsProd"}]}}
    doc = template({"Fn": function({"Environment": {"Variables": env}})},
                   Parameters={"Stage": {"Type": "String", "Default": "dev"}}, Conditions=conditions,
                   Mappings={"Sizes": {"dev": {"Memory": 128}, "prod": {"Memory": 1024}}})
    assert env_of(doc) == {"JOINED": "a-dev", "SECOND": "y", "SIZE": "128", "MODE": "cheap", "BOTH": "no",
                           "EITHER": "yes", "ONLY_DEV": "dev"}
    prod = env_of(doc, overrides={"Stage": "prod"})
    assert (prod["MODE"], prod["BOTH"], prod["SIZE"]) == ("fast", "yes", "1024") and "ONLY_DEV" not in prod


def test_a_resource_whose_condition_is_false_is_left_out():
    doc = template({"Fn": function(), "ProdOnly": function(Condition="IsProd"),
                    "Uses": function({"Environment": {"Variables": {"P": {"Ref": "ProdOnly"}}}})},
                   Parameters={"Stage": {"Type": "String", "Default": "dev"}},
                   Conditions={"IsProd": {"Fn::Equals": [{"Ref": "Stage"}, "prod"]}})
    with pytest.raises(TemplateError, match=r"^Resources\.Uses\.Properties\.Environment\.Variables\.P: .*left out"):
        parse_template(doc)
    del doc["Resources"]["Uses"]
    assert list(parse_template(doc).functions) == ["Fn"]
    assert list(parse_template(doc, parameter_overrides={"Stage": "prod"}).functions) == ["Fn", "ProdOnly"]


@pytest.mark.parametrize("value, message", [
    ({"Ref": "Missing"}, r"!Ref Missing: no parameter, pseudo parameter or resource"),
    ({"Fn::GetAtt": "Table.Arn"}, r"!GetAtt Table\.Arn has no local value"),
    ({"Fn::GetAtt": "Docs.WebsiteURL"}, r"!GetAtt Docs\.WebsiteURL has no local value"),
    ({"Fn::ImportValue": "shared-vpc"}, r"Fn::ImportValue cannot be resolved locally"),
    ({"Fn::GetAtt": "Docs"}, r"!GetAtt takes Resource\.Attribute"),
    ({"Fn::Sub": "${Nope}"}, r"!Ref Nope"),
    ({"Fn::If": ["Nope", "a", "b"]}, r"no condition 'Nope'"),
    ({"Fn::FindInMap": ["Sizes", "dev", "Cpu"]}, r"no Mappings\.Sizes\.dev\.Cpu"),
    ({"Fn::Split": [","]}, r"!Split takes \[delimiter, string\]"),
    (["a", "list"], r"must be a string"),
])
def test_an_unresolvable_value_is_an_error_naming_its_path(value, message):
    doc = template(resources_with({"BAD": value}), Mappings={"Sizes": {"dev": {"Memory": 128}}})
    with pytest.raises(TemplateError, match=r"^Resources\.Fn\.Properties\.Environment\.Variables\.BAD: .*" + message):
        parse_template(doc)


def test_properties_a_local_run_does_not_use_are_left_unresolved():
    doc = template({"Fn": function({"Role": {"Fn::GetAtt": "Role.Arn"}, "Policies": [{"Fn::ImportValue": "x"}]}),
                    "Role": {"Type": "AWS::IAM::Role"}})
    assert parse_template(doc).function("Fn").handler == "app.handler"


# --- typed events and their mistakes ----------------------------------------------

def test_events_are_typed_specs():
    events = {"Web": {"Type": "HttpApi", "Properties": {"Method": "post", "Path": "/ask"}},
              "Any": {"Type": "Api"},
              "Upload": {"Type": "S3", "Properties": {
                  "Bucket": {"Ref": "Docs"}, "Events": ["s3:ObjectCreated:Put"],
                  "Filter": {"S3Key": {"Rules": [{"Name": "prefix", "Value": {"Fn::Sub": "${Stage}/"}},
                                                 {"Name": "suffix", "Value": ".txt"}]}}}},
              "Nightly": {"Type": "Schedule", "Properties": {"Schedule": "cron(0 3 * * ? *)", "Enabled": False,
                                                             "Input": '{"k": 1}', "Name": "nightly"}}}
    doc = template({"Fn": function({"Events": events}), "Docs": {"Type": "AWS::S3::Bucket"}},
                   Parameters={"Stage": {"Type": "String", "Default": "dev"}})
    web, any_, upload, nightly = parse_template(doc).function("Fn").events
    assert web == HttpEvent(name="Web", type="HttpApi", method="POST", path="/ask")
    assert any_ == HttpEvent(name="Any", type="Api", method="ANY", path="$default")
    assert upload == S3Event(name="Upload", bucket="docs", events=["s3:ObjectCreated:Put"], prefix="dev/",
                             suffix=".txt")
    assert nightly == ScheduleEvent(name="Nightly", expression="cron(0 3 * * ? *)", rule="nightly", enabled=False,
                                    input={"k": 1})


@pytest.mark.parametrize("event, message", [
    ({"Type": "S3", "Properties": {"Events": "s3:ObjectCreated:*"}}, r"Events\.E\.Properties\.Bucket: required"),
    ({"Type": "Schedule", "Properties": {"Schedule": "rate(1 week)"}}, r"Events\.E\.Properties\.Schedule: "),
    ({"Type": "Schedule", "Properties": {"Schedule": "cron(0 12 * * * *)"}}, r"Events\.E\.Properties\.Schedule: "),
    ({"Type": "SQS", "Properties": {}}, r"Events\.E\.Type: must be one of HttpApi, Api, S3, Schedule"),
    ({"Type": "Schedule", "Properties": {"Schedule": "rate(1 hour)", "Input": "{no"}}, r"Events\.E\.Properties\.Input"),
])
def test_an_event_mistake_is_reported_at_load_with_its_path(tmp_path, event, message):
    path = tmp_path / "template.yaml"
    path.write_text(yaml.safe_dump(template({"Fn": function({"Events": {"E": event}})})))
    with pytest.raises(TemplateError, match=r"^Resources\.Fn\.Properties\." + message):
        load_template(path)


def test_short_form_tags_are_read_from_yaml(tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text("""
Transform: AWS::Serverless-2016-10-31
Parameters:
  Greeting: {Type: String, Default: hello}
Conditions:
  Loud: !Equals [!Ref Greeting, HELLO]
Resources:
  Docs:
    Type: AWS::S3::Bucket
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: src/
      Handler: app.handler
      Environment:
        Variables:
          MESSAGE: !Sub "${Greeting}, ${Docs}"
          ARN: !GetAtt Docs.Arn
          TONE: !If [Loud, loud, quiet]
          PARTS: !Join [",", !Split ["-", a-b]]
""")
    assert load_template(path, {"Greeting": "HELLO"}).function("Fn").environment == {
        "MESSAGE": "HELLO, docs", "ARN": "arn:aws:s3:::docs", "TONE": "loud", "PARTS": "a,b"}
