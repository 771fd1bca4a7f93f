"""What a deployment may carry and what a function is handed, without a server:
deployed configuration checked by the template's model, bundle caps and
escaping entries, the bounded queue of asynchronous invocations, and the
allowlisted environment of a function instance."""
from __future__ import annotations

import asyncio
import io
import struct
import zipfile
from pathlib import Path

import pytest

from runtime.functions.deployments import BundleLimits, DeployError, sha256_of, unpack
from runtime.functions.instance import FunctionInstance, caller_aws_environment
from runtime.template.function_spec import FunctionSpec, TemplateError, with_config
from runtime.template.reader import parse_template
from runtime.triggers.asyncinvoke import AsyncInvoker, InvokeOutcome, QueueFull
from runtime.triggers.delivery import DeliveryStore

BASE = FunctionSpec(name="Fn", code_uri=Path("."), handler="app.handler")


@pytest.mark.parametrize("config, field", [
    ({"Timeout": "x"}, "Timeout"), ({"Timeout": 0}, "Timeout"), ({"Timeout": 901}, "Timeout"),
    ({"MemorySize": 64}, "MemorySize"), ({"Handler": "no-dot"}, "Handler"),
    ({"Environment": {"A": 1}}, "Environment.A"), ({"Environment": {"A B": "x"}}, "Environment"),
    ({"Environment": {"A": "nul\0"}}, "Environment"), ({"Environment": {"A": "x" * 5000}}, "Environment"),
    ({"Environment": "A=1"}, "Environment"), ({"Role": "arn"}, "Role"),
])
def test_a_deployed_config_is_checked_by_the_template_model(config, field):
    with pytest.raises(TemplateError, match=rf"^{field}"):
        with_config(BASE, config)


def test_a_valid_deployed_config_changes_only_what_it_names():
    spec = with_config(BASE, {"Timeout": 30, "Environment": {"GREETING": "hi"}})
    assert (spec.timeout, spec.environment, spec.handler, spec.memory_size) == (30, {"GREETING": "hi"},
                                                                                 "app.handler", 128)


def test_the_template_refuses_an_environment_no_process_could_start_with(tmp_path):
    doc = {"Resources": {"Fn": {"Type": "AWS::Serverless::Function", "Properties": {
        "CodeUri": ".", "Handler": "app.handler", "Environment": {"Variables": {"1BAD": "x"}}}}}}
    with pytest.raises(TemplateError, match=r"Resources\.Fn\.Properties\.Environment\.Variables"):
        parse_template(doc, tmp_path / "template.yaml")


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _unpack(bundle: bytes, into: Path, **limits) -> Path:
    return unpack(bundle, sha256_of(bundle), into, BundleLimits(**limits))


def _understating(size: int) -> bytes:
    """A zip whose directory says its one file is 10 bytes when it inflates to ``size``."""
    data = bytearray(_zip({"big.bin": bytes(size)}))
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 10)
    local = data.find(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, 10)
    return bytes(data)


@pytest.mark.parametrize("bundle, limits, reason", [
    (_zip({"a.py": b"x" * 100_000}), {"max_bytes": 100}, "the limit is 100"),
    (_zip({f"f{i}": b"" for i in range(11)}), {"max_entries": 10}, "11 entries"),
    (_zip({"a.bin": bytes(1_000_000)}), {"max_unzipped_bytes": 100_000}, "unzips to more than"),
    (_zip({"a.bin": bytes(60_000), "b.bin": bytes(60_000)}), {"max_unzipped_bytes": 100_000}, "unzips"),
    (_understating(1_000_000), {"max_unzipped_bytes": 100_000}, "unzips|not a readable zip"),
    (_zip({"../x.py": b"x"}), {}, "escapes"), (_zip({"a/../../x.py": b"x"}), {}, "escapes"),
    (_zip({"/abs.py": b"x"}), {}, "escapes"), (_zip({"..\\x.py": b"x"}), {}, "escapes"),
    (_zip({"C:/x.py": b"x"}), {}, "escapes"), (_zip({}, symlink="link"), {}, "escapes"),
    (b"not a zip", {}, "not a readable zip"),
])
def test_a_bundle_past_its_limits_or_escaping_its_folder_is_refused_leaving_nothing(tmp_path, bundle, limits,
                                                                                      reason):
    into = tmp_path / "bundles" / "deep"
    into.mkdir(parents=True)
    with pytest.raises(DeployError, match=reason):
        _unpack(bundle, into, **limits)
    assert list(into.iterdir()) == []  # no half-unpacked folder
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bundles", "deep"]


def test_a_bundle_within_its_limits_unpacks(tmp_path):
    bundle = _zip({"app.py": b"def handler(e, c): pass\n", "pkg/mod.py": b""})
    out = _unpack(bundle, tmp_path, max_bytes=10_000, max_entries=2, max_unzipped_bytes=100)
    assert (out / "pkg" / "mod.py").is_file() and out.name == sha256_of(bundle)


# --- the asynchronous queue --------------------------------------------------------

async def test_the_event_queue_refuses_past_its_limit_and_takes_more_once_events_finish(tmp_path):
    release = asyncio.Event()

    async def invoke(function, event):
        await release.wait()
        return InvokeOutcome(ok=True)

    async def nowhere(*_):
        pass

    store = DeliveryStore(tmp_path / "d.sqlite")
    invoker = AsyncInvoker(invoke, store=store, failure_destination=nowhere, queue_limit=2)
    assert await invoker.submit("Fn", {}, event_id="a", bounded=True)
    assert await invoker.submit("Fn", {}, event_id="b", bounded=True)
    with pytest.raises(QueueFull):
        await invoker.submit("Fn", {}, event_id="c", bounded=True)
    assert store.get("c") is None  # refused: never recorded, so never delivered
    assert await invoker.submit("Fn", {}, event_id="s3", bounded=False)  # a trigger's event is not refused
    release.set()
    await invoker.drain()
    assert await invoker.submit("Fn", {}, event_id="d", bounded=True)
    await invoker.drain()
    assert [store.get(e).status for e in "abd"] == ["done"] * 3
    store.close()


async def test_concurrent_submissions_never_overshoot_the_queue_limit(tmp_path):
    async def invoke(function, event):
        await asyncio.sleep(0.5)
        return InvokeOutcome(ok=True)

    async def nowhere(*_):
        pass

    store = DeliveryStore(tmp_path / "d.sqlite")
    invoker = AsyncInvoker(invoke, store=store, failure_destination=nowhere, queue_limit=3)
    results = await asyncio.gather(*(invoker.submit("Fn", {}, event_id=str(i), bounded=True)
                                     for i in range(10)), return_exceptions=True)
    assert sum(r is True for r in results) == 3
    assert sum(isinstance(r, QueueFull) for r in results) == 7
    await invoker.close()
    store.close()


# --- the instance environment ---------------------------------------------------------

SECRETS = {"LLMFN_ADMIN_KEY": "admin-secret", "LLMFN_API_KEYS": "k1,k2", "LLMFN_REDIS_URL": "redis://x",
           "AWS_ACCESS_KEY_ID": "AKIASERVICE", "AWS_SECRET_ACCESS_KEY": "service-secret",
           "AWS_SESSION_TOKEN": "service-token", "OPENAI_API_KEY": "sk-service", "DATABASE_URL": "pg://secret"}


async def test_an_instance_environment_is_an_allowlist(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    spec = BASE.model_copy(update={"environment": {"GREETING": "hi"}})
    inst = FunctionInstance(spec, runtime_api="127.0.0.1:1", gateway_url="http://127.0.0.1:2",
                            log=lambda *_: None, env_overrides={"FROM_ENV_VARS": "1"})
    env = inst.environment()
    assert not set(SECRETS) & set(env)
    assert not [v for v in env.values() if any(s in v for s in SECRETS.values())]
    assert env["GREETING"] == "hi" and env["FROM_ENV_VARS"] == "1" and env["LC_ALL"] == "C.UTF-8"
    assert env["PATH"] and env["_HANDLER"] == "app.handler" and env["AWS_LAMBDA_FUNCTION_NAME"] == "Fn"


async def test_only_an_instance_knows_its_runtime_api_path(aiohttp_client):
    from runtime.functions.runtime_api import build_runtime_api

    inst = FunctionInstance(BASE, runtime_api="127.0.0.1:1", gateway_url="http://127.0.0.1:2", log=lambda *_: None)
    assert len(inst.id) == 32 and inst.environment()["AWS_LAMBDA_RUNTIME_API"].endswith(f"/i/{inst.id}")
    client = await aiohttp_client(build_runtime_api({inst.id: inst}))
    for guess in (inst.id[:12], "0" * 32, "../" + inst.id):
        resp = await client.get(f"/i/{guess}/2018-06-01/runtime/invocation/next")
        assert resp.status == 404


def test_the_emulator_hands_on_only_the_callers_aws_credentials_and_endpoints():
    env = {**SECRETS, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000", "HOME": "/home/me"}
    assert caller_aws_environment(env) == {
        "AWS_ACCESS_KEY_ID": "AKIASERVICE", "AWS_SECRET_ACCESS_KEY": "service-secret",
        "AWS_SESSION_TOKEN": "service-token", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000"}


# --- the Invoke API's checks, before anything reaches an instance ------------------------

class NoInstances:
    """A function service with one function that must never be invoked."""
    functions = {"Fn": BASE}

    async def invoke(self, *args, **kw):
        raise AssertionError("a refused request reached the function")


def _open_auth():
    """No keys configured: the emulator's default, where invokes need none."""
    from runtime.gateway.auth import Authenticator, InvocationTokens, StaticKeys

    return Authenticator(StaticKeys(frozenset()), InvocationTokens())


@pytest.mark.parametrize("headers, status, error", [
    ({"X-Amz-Invocation-Type": "Sometimes"}, 400, "InvalidParameterValueException"),
    ({"X-Amz-Client-Context": "bm90IGpzb24NCkEtQjogMQ=="}, 400, "InvalidRequestContentException"),
    ({"X-Amz-Client-Context": "%%%"}, 400, "InvalidRequestContentException"),
    ({"X-Amz-Client-Context": "W10="}, 400, "InvalidRequestContentException"),  # [] is not an object
    ({"X-Amz-Client-Context": "e30=" * 1000}, 400, "InvalidRequestContentException"),
])
async def test_the_invoke_api_refuses_bad_headers_before_invoking(aiohttp_client, headers, status, error):
    from runtime.triggers.lambda_api import build_lambda_api

    client = await aiohttp_client(build_lambda_api(NoInstances(), _open_auth()))
    resp = await client.post("/2015-03-31/functions/Fn/invocations", data=b"{}", headers=headers)
    assert resp.status == status and (await resp.json())["__type"] == error


async def test_the_emulators_event_queue_is_bounded(aiohttp_client, monkeypatch):
    import runtime.triggers.lambda_api as lambda_api

    class Slow(NoInstances):
        async def invoke(self, *args, **kw):
            await asyncio.sleep(30)  # still running when the third event arrives

    monkeypatch.setattr(lambda_api, "IN_MEMORY_EVENT_LIMIT", 2)
    client = await aiohttp_client(lambda_api.build_lambda_api(Slow(), _open_auth()))
    statuses = [(await client.post("/2015-03-31/functions/Fn/invocations", data=b"{}",
                                   headers={"X-Amz-Invocation-Type": "Event"})).status for _ in range(3)]
    assert statuses == [202, 202, 429]
