"""The LLM layer (layers/llm): attach(), the wrapper handler and the layer zip,
against a fake gateway (an aiohttp app on a loopback socket, in a thread)."""
from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import zipfile
from pathlib import Path

import openai
import pytest
from aiohttp import web

REPO = Path(__file__).resolve().parents[2]
LAYER_DIR = REPO / "layers" / "llm"
if str(LAYER_DIR / "python") not in sys.path:
    sys.path.insert(0, str(LAYER_DIR / "python"))

import llmfn_llm  # noqa: E402
import llmfn_llm.handler  # noqa: E402

KEY = "sk-llmfn-test-4f1c2a"
OTHER_KEY = "sk-runtime-token-9b7e"
REPLY = "Hello from the fake gateway."
PROMPT_TOKENS, COMPLETION_TOKENS = 7, 5
LAYER_ENV = ("LLMFN_GATEWAY_URL", "LLMFN_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY",
             "LLMFN_MAX_RETRIES", "LLMFN_HANDLER")


class FakeGateway:
    """A fake llmfn gateway: a fixed chat completion, the usage it has served and
    a token budget; every route wants one of ``keys`` as a Bearer token."""

    def __init__(self, keys=(KEY,), budget: int | None = 1000, quota_route: bool = True):
        self.keys = set(keys)
        self.budget = budget
        self.quota_route = quota_route
        self.seen_keys: list[str] = []
        self.quota_models: list[str | None] = []
        self.calls = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        key = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if key not in self.keys:
            return web.json_response({"error": {"message": "invalid API key", "type": "invalid_request_error",
                                                "code": "invalid_api_key"}}, status=401)
        self.seen_keys.append(key)
        return await handler(request)

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls += 1
        return web.json_response({
            "id": f"chatcmpl-fake-{self.calls}", "object": "chat.completion", "created": 1700000000,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": REPLY}}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
                      "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS},
        })

    def usage(self) -> dict[str, int]:
        prompt, completion = self.calls * PROMPT_TOKENS, self.calls * COMPLETION_TOKENS
        return {"calls": self.calls, "prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    async def _usage(self, request: web.Request) -> web.Response:
        return web.json_response(self.usage())

    async def _quota(self, request: web.Request) -> web.Response:
        self.quota_models.append(request.query.get("model"))
        remaining = None if self.budget is None else self.budget - self.usage()["total_tokens"]
        return web.json_response({"remaining_tokens": remaining})

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/invocation/usage", self._usage)
        if self.quota_route:
            app.router.add_get("/v1/invocation/quota", self._quota)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def __enter__(self) -> FakeGateway:
        self._thread.start()
        assert self._ready.wait(10), "fake gateway did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class FakeLambdaContext:
    """The Lambda context fields a platform passes, with 30 s left."""

    function_name = "hello"
    aws_request_id = "req-1"

    def __init__(self, remaining_ms: int = 30_000):
        self._remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self._remaining_ms


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in LAYER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def gateway():
    with FakeGateway(keys=(KEY, OTHER_KEY)) as fake:
        yield fake


def ask(llm: openai.OpenAI) -> str:
    reply = llm.chat.completions.create(model="gemma3-270m", messages=[{"role": "user", "content": "hi"}])
    return reply.choices[0].message.content


# --- attach() -----------------------------------------------------------------

def test_attach_from_llmfn_gateway_env(gateway, monkeypatch):
    monkeypatch.setenv("LLMFN_GATEWAY_URL", gateway.origin)
    monkeypatch.setenv("LLMFN_API_KEY", KEY)
    context = llmfn_llm.attach(FakeLambdaContext())
    assert isinstance(context.llm, openai.OpenAI)
    assert str(context.llm.base_url) == gateway.origin + "/v1/"
    assert ask(context.llm) == REPLY
    assert gateway.seen_keys == [KEY]
    assert context.llm.max_retries == 2
    assert context.llm.timeout == pytest.approx(30.0)


def test_attach_from_openai_env_set_by_the_runtime(gateway, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", gateway.origin + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", OTHER_KEY)
    context = llmfn_llm.attach(FakeLambdaContext())
    assert isinstance(context.llm, openai.OpenAI)
    assert ask(context.llm) == REPLY
    assert gateway.seen_keys == [OTHER_KEY]


def test_lookup_order_arguments_then_llmfn_then_openai(gateway, monkeypatch):
    monkeypatch.setenv("LLMFN_GATEWAY_URL", gateway.origin)
    monkeypatch.setenv("LLMFN_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    ask(llmfn_llm.attach(FakeLambdaContext()).llm)
    ask(llmfn_llm.attach(FakeLambdaContext(), base_url=gateway.origin + "/v1", api_key=OTHER_KEY).llm)
    assert gateway.seen_keys == [KEY, OTHER_KEY]


def test_max_retries_from_env_and_no_timeout_without_deadline(gateway, monkeypatch):
    monkeypatch.setenv("LLMFN_MAX_RETRIES", "0")
    context = llmfn_llm.attach(type("Bare", (), {})(), base_url=gateway.origin, api_key=KEY)
    assert context.llm.max_retries == 0
    assert context.allm.max_retries == 0
    assert ask(context.llm) == REPLY


async def test_allm_is_the_async_twin(gateway):
    context = llmfn_llm.attach(FakeLambdaContext(), base_url=gateway.origin, api_key=KEY)
    assert isinstance(context.allm, openai.AsyncOpenAI)
    reply = await context.allm.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "hi"}])
    await context.allm.close()
    assert reply.choices[0].message.content == REPLY
    assert gateway.seen_keys == [KEY]


def test_llm_usage_reads_the_gateway_live(gateway):
    context = llmfn_llm.attach(FakeLambdaContext(), base_url=gateway.origin, api_key=KEY)
    assert context.llm_usage.calls == 0
    ask(context.llm)
    ask(context.llm)
    usage = context.llm_usage
    assert (usage.calls, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (2, 14, 10, 24)
    assert usage.as_dict() == usage.dict() == gateway.usage()
    assert KEY not in repr(usage)


def test_llm_usage_with_a_wrong_key_is_refused(gateway):
    context = llmfn_llm.attach(FakeLambdaContext(), base_url=gateway.origin, api_key="sk-wrong-key-123")
    with pytest.raises(openai.AuthenticationError) as err:
        context.llm_usage.calls  # noqa: B018 - reading it calls the gateway
    assert "sk-wrong-key-123" not in str(err.value)


def test_get_remaining_tokens(gateway):
    context = llmfn_llm.attach(FakeLambdaContext(), base_url=gateway.origin, api_key=KEY)
    assert context.get_remaining_tokens() == 1000
    ask(context.llm)
    assert context.get_remaining_tokens("gemma3-270m") == 1000 - 12
    assert gateway.quota_models == [None, "gemma3-270m"]
    gateway.budget = None
    assert context.get_remaining_tokens() is None


def test_get_remaining_tokens_is_none_without_a_quota_route():
    with FakeGateway(quota_route=False) as fake:
        context = llmfn_llm.attach(FakeLambdaContext(), base_url=fake.origin, api_key=KEY)
        assert context.get_remaining_tokens() is None


def test_missing_config_names_the_env_vars():
    with pytest.raises(RuntimeError) as err:
        llmfn_llm.attach(FakeLambdaContext())
    for name in ("LLMFN_GATEWAY_URL", "LLMFN_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        assert name in str(err.value)


def test_half_config_names_the_missing_var_and_never_the_key(monkeypatch):
    # A remote gateway URL with no LLMFN_API_KEY must not borrow OPENAI_API_KEY.
    monkeypatch.setenv("LLMFN_GATEWAY_URL", "https://llm.example.com")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(RuntimeError, match="LLMFN_API_KEY") as err:
        llmfn_llm.attach(FakeLambdaContext())
    assert KEY not in str(err.value)

    monkeypatch.setenv("LLMFN_API_KEY", KEY)
    monkeypatch.setenv("LLMFN_MAX_RETRIES", "many")
    with pytest.raises(RuntimeError, match="LLMFN_MAX_RETRIES") as err:
        llmfn_llm.attach(FakeLambdaContext())
    assert KEY not in str(err.value)

    monkeypatch.delenv("LLMFN_MAX_RETRIES")
    monkeypatch.setenv("LLMFN_GATEWAY_URL", "llm.example.com")
    with pytest.raises(RuntimeError, match="LLMFN_GATEWAY_URL") as err:
        llmfn_llm.attach(FakeLambdaContext())
    assert KEY not in str(err.value)


def test_config_repr_hides_the_key():
    config = llmfn_llm.GatewayEndpoint.resolve(base_url="https://llm.example.com", api_key=KEY)
    assert config.api_base == "https://llm.example.com/v1"
    assert KEY not in repr(config) and KEY not in str(config)


# --- the wrapper handler ------------------------------------------------------

@pytest.fixture
def function_dir(tmp_path, monkeypatch):
    """A folder on sys.path for the function's own code; its modules are
    forgotten afterwards."""
    code = tmp_path / "task"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    before = set(sys.modules)
    yield code
    for name in set(sys.modules) - before:
        del sys.modules[name]


SYNC_APP = '''
def handler(event, context):
    reply = context.llm.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": event["q"]}])
    return {"reply": reply.choices[0].message.content, "calls": context.llm_usage.calls}
'''

ASYNC_APP = '''
async def handler(event, context):
    reply = await context.allm.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": event["q"]}])
    return {"reply": reply.choices[0].message.content, "calls": context.llm_usage.calls}
'''


def test_wrapper_runs_a_sync_handler_named_by_a_dotted_path(gateway, function_dir, monkeypatch):
    (function_dir / "fnpkg").mkdir()
    (function_dir / "fnpkg" / "__init__.py").write_text("")
    (function_dir / "fnpkg" / "sync_app.py").write_text(SYNC_APP)
    monkeypatch.setenv("LLMFN_HANDLER", "fnpkg.sync_app.handler")
    monkeypatch.setenv("LLMFN_GATEWAY_URL", gateway.origin)
    monkeypatch.setenv("LLMFN_API_KEY", KEY)
    first = llmfn_llm.handler.handler({"q": "hi"}, FakeLambdaContext())
    second = llmfn_llm.handler.handler({"q": "again"}, FakeLambdaContext())
    assert (first, second) == ({"reply": REPLY, "calls": 1}, {"reply": REPLY, "calls": 2})
    assert llmfn_llm.handler.load_handler("fnpkg.sync_app.handler") is sys.modules["fnpkg.sync_app"].handler


def test_wrapper_runs_an_async_handler_across_invocations(gateway, function_dir, monkeypatch):
    (function_dir / "async_app.py").write_text(ASYNC_APP)
    monkeypatch.setenv("LLMFN_HANDLER", "async_app.handler")
    monkeypatch.setenv("LLMFN_GATEWAY_URL", gateway.origin)
    monkeypatch.setenv("LLMFN_API_KEY", KEY)
    assert llmfn_llm.handler.handler({"q": "hi"}, FakeLambdaContext()) == {"reply": REPLY, "calls": 1}
    assert llmfn_llm.handler.handler({"q": "hi"}, FakeLambdaContext()) == {"reply": REPLY, "calls": 2}
    assert gateway.seen_keys.count(KEY) == 4


@pytest.mark.parametrize("spec, message", [
    (None, "LLMFN_HANDLER is not set"),
    ("handler", "is not 'module.function'"),
    ("no_such_module_xyz.handler", "cannot import module 'no_such_module_xyz'"),
    ("broken_app.handler", "has no 'handler'"),
    ("broken_app.NOT_CALLABLE", "is not callable"),
    ("llmfn_llm.handler.handler", "names this wrapper"),
])
def test_wrapper_explains_a_bad_llmfn_handler(spec, message, function_dir, monkeypatch):
    (function_dir / "broken_app.py").write_text("NOT_CALLABLE = 1\n")
    monkeypatch.setenv("LLMFN_API_KEY", KEY)
    if spec is not None:
        monkeypatch.setenv("LLMFN_HANDLER", spec)
    with pytest.raises(RuntimeError, match=message) as err:
        llmfn_llm.handler.handler({}, FakeLambdaContext())
    assert KEY not in str(err.value)


# --- the layer zip ------------------------------------------------------------

def load_build_module():
    spec = importlib.util.spec_from_file_location("llm_layer_build", LAYER_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_layer_zip_is_reproducible(tmp_path):
    build = load_build_module()
    first = build.build_layer(tmp_path / "a")
    # Leave bytecode next to the sources: it must not reach the zip.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(LAYER_DIR / "python")], check=True)
    second = build.build_layer(tmp_path / "b")
    assert first.name == "llmfn-llm-layer.zip"
    assert sha256(first) == sha256(second)
    names = zipfile.ZipFile(first).namelist()
    assert names and all(n.startswith("python/llmfn_llm/") for n in names)
    assert {"python/llmfn_llm/__init__.py", "python/llmfn_llm/handler.py"} <= set(names)
    assert not any("__pycache__" in n or not n.endswith(".py") for n in names)

    cli = subprocess.run([sys.executable, str(LAYER_DIR / "build.py"), str(tmp_path / "c")],
                         capture_output=True, text=True, check=True)
    assert cli.stdout.split() == [sha256(first), str(tmp_path / "c" / "llmfn-llm-layer.zip")]


LAMBDA_LIKE_INVOKE = '''
import json, os, sys
repo, layer = sys.argv[1], sys.argv[2]
assert not any(os.path.realpath(p or ".") == repo for p in sys.path), sys.path
import llmfn_llm.handler
assert llmfn_llm.handler.__file__.startswith(layer), llmfn_llm.handler.__file__

class LambdaContext:
    function_name, aws_request_id = "hello", "req-1"
    def get_remaining_time_in_millis(self):
        return 30000

print(json.dumps(llmfn_llm.handler.handler({"q": "hi"}, LambdaContext())))
'''


def test_unzipped_layer_runs_the_wrapper_like_a_lambda_platform(gateway, tmp_path):
    layer_zip = load_build_module().build_layer(tmp_path / "dist")
    opt = tmp_path / "opt"  # where a Lambda platform unpacks layers
    zipfile.ZipFile(layer_zip).extractall(opt)
    task = tmp_path / "task"  # where it unpacks the function's own code
    task.mkdir()
    (task / "app.py").write_text(SYNC_APP)
    env = {k: v for k, v in os.environ.items() if k not in LAYER_ENV and k != "PYTHONPATH"}
    env.update(PYTHONPATH=os.pathsep.join([str(opt / "python"), str(task)]),
               LLMFN_HANDLER="app.handler", LLMFN_GATEWAY_URL=gateway.origin, LLMFN_API_KEY=KEY)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LAMBDA_LIKE_INVOKE), str(REPO.resolve()), str(opt)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"reply": REPLY, "calls": 1}
    assert gateway.seen_keys == [KEY, KEY]
