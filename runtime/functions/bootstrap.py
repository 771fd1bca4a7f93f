"""The function instance: a Lambda runtime client in its own process.

Imports the handler once (init), then loops on the Runtime API's
``invocation/next``: builds the context (Lambda fields plus ``context.llm``
from the LLM layer), runs the handler (sync, ``async def`` or a generator that
streams), and posts the response or a Lambda-style error. Run as
``python -m runtime.functions.bootstrap`` with ``AWS_LAMBDA_RUNTIME_API`` and
``_HANDLER`` set, like a Lambda runtime's bootstrap.

``--spare``: a spare interpreter started ahead of need with no function's
environment. It imports what every instance imports (the LLM layer and the
openai SDK), says so on stdout, then waits on stdin for one function's
environment and working directory; it takes them exactly as a fresh process
would have had them (``os.environ`` replaced, ``sys.path`` rebuilt) before it
imports the handler. ``--debug-port PORT``: wait for a debugpy client on
127.0.0.1:PORT before importing the handler."""
from __future__ import annotations

import asyncio
import http.client
import importlib
import inspect
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

import llmfn_llm

STREAM_PRELUDE_TYPE = "application/vnd.awslambda.http-integration-response"


class LambdaContext:
    """The AWS Lambda context object, plus what the LLM layer attaches."""

    def __init__(self, headers: http.client.HTTPMessage):
        env = os.environ
        self.function_name = env["AWS_LAMBDA_FUNCTION_NAME"]
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn", "")
        self.memory_limit_in_mb = int(env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
        self.aws_request_id = headers["Lambda-Runtime-Aws-Request-Id"]
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = None
        client_context = headers.get("Lambda-Runtime-Client-Context")
        self.client_context = json.loads(client_context) if client_context else None
        self._deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms", "0"))

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))


class RuntimeApi:
    def __init__(self, endpoint: str):
        hostport, _, prefix = endpoint.partition("/")
        self.prefix = ("/" + prefix if prefix else "") + "/2018-06-01/runtime"
        self.conn = http.client.HTTPConnection(hostport, timeout=None)

    def _send(self, method: str, path: str, body: Any = None, headers: dict | None = None,
              chunked: bool = False) -> tuple[http.client.HTTPResponse, bytes]:
        self.conn.request(method, self.prefix + path, body=body, headers=headers or {},
                          encode_chunked=chunked)
        resp = self.conn.getresponse()
        return resp, resp.read()

    def next(self) -> tuple[bytes, http.client.HTTPMessage]:
        resp, body = self._send("GET", "/invocation/next")
        return body, resp.headers

    def respond(self, request_id: str, result: Any) -> None:
        body = json.dumps(result).encode()
        self._send("POST", f"/invocation/{request_id}/response", body,
                   {"Content-Type": "application/json"})

    def stream(self, request_id: str, chunks: Iterator[bytes], content_type: str) -> None:
        self._send("POST", f"/invocation/{request_id}/response", chunks,
                   {"Content-Type": content_type, "Lambda-Runtime-Function-Response-Mode": "streaming",
                    "Transfer-Encoding": "chunked"}, chunked=True)

    def error(self, request_id: str | None, exc: BaseException, error_type: str | None = None) -> None:
        body = json.dumps(error_body(exc, error_type)).encode()
        path = f"/invocation/{request_id}/error" if request_id else "/init/error"
        self._send("POST", path, body, {"Content-Type": "application/json",
                                         "Lambda-Runtime-Function-Error-Type": error_type or "Unhandled"})


def error_body(exc: BaseException, error_type: str | None = None) -> dict[str, Any]:
    return {"errorMessage": str(exc), "errorType": error_type or type(exc).__name__,
            "requestId": "", "stackTrace": traceback.format_tb(exc.__traceback__)[1:] or []}


def import_handler(name: str):
    module_name, _, func = name.rpartition(".")
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as exc:
        raise HandlerInitError("Runtime.ImportModuleError",
                               f"Unable to import module '{module_name}': {exc}") from exc
    handler = getattr(module, func, None)
    if handler is None:
        raise HandlerInitError("Runtime.HandlerNotFound", f"Handler '{func}' missing on module '{module_name}'")
    return handler


class HandlerInitError(Exception):
    """The handler cannot be imported: an init error of the Runtime API, with Lambda's type."""

    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type = error_type


def _encode(chunk: Any) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, str):
        return chunk.encode()
    return json.dumps(chunk).encode()


def _stream_chunks(result: Any, loop: asyncio.AbstractEventLoop) -> tuple[Iterator[bytes], str]:
    """A generator's items as bytes; a first dict with ``statusCode`` is the HTTP prelude."""
    if inspect.isasyncgen(result):
        agen = result

        def sync_items():
            while True:
                try:
                    yield loop.run_until_complete(agen.__anext__())
                except StopAsyncIteration:
                    return
        items = sync_items()
    else:
        items = iter(result)
    first = next(items, None)
    if isinstance(first, dict) and "statusCode" in first:
        prelude = json.dumps(first).encode() + b"\0" * 8

        def with_prelude():
            yield prelude
            for item in items:
                yield _encode(item)
        return with_prelude(), STREAM_PRELUDE_TYPE

    def plain():
        if first is not None:
            yield _encode(first)
        for item in items:
            yield _encode(item)
    return plain(), "application/octet-stream"


def run_one(api: RuntimeApi, handler, loop: asyncio.AbstractEventLoop) -> None:
    event_bytes, headers = api.next()
    request_id = headers["Lambda-Runtime-Aws-Request-Id"]
    base_url = headers.get("Lambda-Runtime-Llmfn-Gateway", "").rstrip("/") + "/v1"
    token = headers.get("Lambda-Runtime-Llmfn-Token", "")
    # Any OpenAI-compatible library in the handler finds the gateway with no configuration.
    os.environ["OPENAI_BASE_URL"], os.environ["OPENAI_API_KEY"] = base_url, token
    try:
        context = LambdaContext(headers)  # inside: a bad header fails this invocation, not the instance
        llmfn_llm.attach(context, base_url=base_url, api_key=token)
        event = json.loads(event_bytes) if event_bytes else {}
        result = handler(event, context)
        if inspect.isawaitable(result):
            try:
                result = loop.run_until_complete(result)
            finally:
                loop.run_until_complete(context.allm.close())
        if inspect.isgenerator(result) or inspect.isasyncgen(result):
            chunks, content_type = _stream_chunks(result, loop)
            api.stream(request_id, chunks, content_type)
        else:
            api.respond(request_id, result)
    except Exception as exc:
        traceback.print_exc()
        api.error(request_id, exc)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def preloaded_modules() -> list[str]:
    """Top-level modules this interpreter has imported that are not the standard
    library's: a function whose code or layers hold one of these names must not
    start from a spare (its own copy would be shadowed)."""
    return sorted({name.partition(".")[0] for name in sys.modules} - set(sys.stdlib_module_names)
                  - {"__main__", "runtime"})


def _pythonpath(env) -> list[str]:
    """PYTHONPATH's entries as Python and site put them on sys.path: each made
    absolute (an empty one is the working directory), duplicates dropped."""
    value = env.get("PYTHONPATH", "")
    return list(dict.fromkeys(os.path.abspath(p) for p in value.split(os.pathsep))) if value else []


def specialize(env: dict[str, str], cwd: str) -> None:
    """Become the process ``python -m runtime.functions.bootstrap`` would have been
    with this environment and working directory."""
    # The tail of sys.path (stdlib, site-packages) is what follows sys.path[0] and
    # this interpreter's own PYTHONPATH entries; the function's replace them.
    tail = sys.path[1 + len(_pythonpath(os.environ)):]
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:] = [os.getcwd(), *dict.fromkeys(_pythonpath(env) + tail)]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
    devnull = os.open(os.devnull, os.O_RDONLY)  # a fresh instance's stdin
    os.dup2(devnull, 0)
    os.close(devnull)


def warm_up() -> None:
    """What a first invocation would otherwise pay: the SDK's HTTP client and TLS
    set-up and its lazily imported resources, on a throwaway client that holds
    no key and is closed before any function is known."""
    import openai

    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="spare")
    for resource in ("chat", "completions", "embeddings", "models"):
        getattr(client, resource)
    client.chat.completions  # noqa: B018 - imported on first access
    client.close()


def wait_as_spare() -> None:
    from runtime.functions.spare import Handover, SpareReady

    warm_up()
    print(SpareReady(preloaded=preloaded_modules()).model_dump_json(), flush=True)
    line = sys.stdin.readline()
    if not line:
        sys.exit(0)  # the host went away or no longer needs a spare
    handover = Handover.model_validate_json(line)
    specialize(handover.env, handover.cwd)


def wait_for_debugger(port: int) -> None:
    import debugpy  # the optional 'debug' extra; the host checks it is installed

    debugpy.listen(("127.0.0.1", port))
    print(f"debugpy listening on 127.0.0.1:{port}; waiting for a debugger to attach", file=sys.stderr, flush=True)
    debugpy.wait_for_client()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--spare"]:
        wait_as_spare()
    elif argv[:1] == ["--debug-port"]:
        wait_for_debugger(int(argv[1]))
    api = RuntimeApi(os.environ["AWS_LAMBDA_RUNTIME_API"])
    task_root = os.environ.get("LAMBDA_TASK_ROOT")
    if task_root and task_root not in sys.path:
        sys.path.insert(0, task_root)
    try:
        handler = import_handler(os.environ["_HANDLER"])
    except HandlerInitError as exc:
        print(f"[ERROR] {exc.error_type}: {exc}", file=sys.stderr, flush=True)
        api.error(None, exc, exc.error_type)
        sys.exit(1)
    except Exception as exc:  # the module raised while importing
        traceback.print_exc()
        api.error(None, exc, "Runtime.UserCodeSyntaxError" if isinstance(exc, SyntaxError) else None)
        sys.exit(1)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    while True:
        run_one(api, handler, loop)


if __name__ == "__main__":
    main()
