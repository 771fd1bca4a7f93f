"""A function instance: one process running ``runtime.functions.bootstrap``,
like a Lambda execution environment. It imports the handler once, runs one
invocation at a time, and stays warm until it idles out or is replaced.

Its process is a fresh interpreter, or a spare one (``spare``) that has
already imported the LLM layer, when the spare can become exactly what the
fresh one would be: the instance decides, from its environment and code."""
from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from runtime import bundled
from runtime.functions.invocation import Invocation
from runtime.functions.logs import FunctionLog, LogLine
from runtime.functions.spare import Handover, Spare, SpareInterpreters
from runtime.template.function_spec import FunctionSpec
from runtime.template.pseudo import LOCAL_REGION


class InstanceState(StrEnum):
    STARTING = "starting"  # the process is importing the handler
    IDLE = "idle"  # warm, waiting for an invocation
    BUSY = "busy"  # running one invocation
    STOPPED = "stopped"


# After the function's own code and layers: the LLM layer (``context.llm``), then
# whatever the interpreter needs to import ``runtime.functions.bootstrap`` itself.
LLMFN_PATHS = [str(bundled.llm_layer_python()), *bundled.runtime_import_path()]
# What an instance takes from the service's own environment (plus LC_*): what a
# process needs to run, as Lambda defines it, and nothing that could be a secret.
INHERITED = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "TMPDIR", "HOME", "LD_LIBRARY_PATH"})
_CALLER_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
               "AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


# What Python reads only when it starts: a function whose environment sets these
# differently from the spare's must start a fresh interpreter.
_STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_")
_STARTUP_NAMES = frozenset({"LANG", "LANGUAGE", "TZ", "HOME"})


def inherited_environment() -> dict[str, str]:
    """What every instance takes from the service's environment."""
    # An allowlist, never os.environ minus a denylist: the service's keys and its own
    # AWS credentials stay out. The template and --env-vars add what a function needs.
    return {k: v for k, v in os.environ.items() if k in INHERITED or k.startswith("LC_")}


def spare_environment() -> dict[str, str]:
    """A spare interpreter's environment: the inherited part and the LLM layer's path."""
    return {**inherited_environment(), "PYTHONPATH": os.pathsep.join(LLMFN_PATHS), "PYTHONUNBUFFERED": "1"}


def _startup_variables(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items()
            if (k.startswith(_STARTUP_PREFIXES) or k in _STARTUP_NAMES) and k != "PYTHONPATH"}


def _top_level_names(directory: str) -> set[str]:
    try:
        return {entry.partition(".")[0] for entry in os.listdir(directory)}
    except OSError:
        return set()


def caller_aws_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's AWS credentials and endpoints, which the emulator hands to the
    functions it runs on the caller's behalf, as ``sam local`` does. ``serve`` does not."""
    return {k: v for k, v in environ.items() if k in _CALLER_AWS or k.startswith("AWS_ENDPOINT_URL")}


class FunctionInstance:
    def __init__(self, spec: FunctionSpec, *, runtime_api: str, gateway_url: str,
                 log: FunctionLog, env_overrides: dict[str, str] | None = None,
                 version: int = 1):
        self.spec = spec
        self.version = version
        self.generation = 0  # the pool's swap this instance was started in
        # 128 random bits: the instance's Runtime API path is its capability (only the
        # instance's own environment holds it), so no other local process can take its events.
        self.id = uuid.uuid4().hex
        self.runtime_api = runtime_api
        self.gateway_url = gateway_url
        self.log = log
        self.env_overrides = env_overrides or {}
        self.pending: asyncio.Queue[Invocation] = asyncio.Queue()
        self.current: Invocation | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.state = InstanceState.STARTING
        self.spawned_at = 0.0
        self.init_duration_ms: float | None = None  # set on the first poll
        self.init_error: dict | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.last_used = time.monotonic()
        self.invocations = 0
        self.prewarmed = False  # started and initialized before any invocation needed it
        self._readers: list[asyncio.Task] = []
        self.from_spare = False  # started from a spare interpreter
        self.debug_port: int | None = None  # waiting for, or running under, a debugger

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def environment(self) -> dict[str, str]:
        spec = self.spec
        paths = [str(spec.code_uri)] + [str(p / "python") if (p / "python").is_dir() else str(p)
                                        for p in spec.layers] + LLMFN_PATHS
        env = inherited_environment()
        env.update({
            "AWS_LAMBDA_RUNTIME_API": f"{self.runtime_api}/i/{self.id}",
            "_HANDLER": spec.handler, "LAMBDA_TASK_ROOT": str(spec.code_uri),
            "AWS_LAMBDA_FUNCTION_NAME": spec.name, "AWS_LAMBDA_FUNCTION_VERSION": str(self.version),
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_size),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(int(spec.timeout)),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{spec.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime(f"%Y/%m/%d/[{self.version}]") + self.id,
            "AWS_REGION": os.environ.get("AWS_REGION", LOCAL_REGION),
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", LOCAL_REGION),
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{spec.runtime}",
            "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1",
        })
        env.update(spec.environment)
        env.update(self.env_overrides)
        return env

    def can_start_from(self, spare: Spare, env: Mapping[str, str]) -> bool:
        """Whether ``spare`` would become exactly the process a fresh start gives:
        Python read the same start-up variables, and none of the modules it has
        imported would have come from the function's code or layers instead."""
        if _startup_variables(env) != _startup_variables(spare_environment()):
            return False
        own = [str(self.spec.code_uri)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                            if p and p not in LLMFN_PATHS]
        return not any(_top_level_names(p) & spare.preloaded for p in own)

    async def start(self, spares: SpareInterpreters | None = None, debug_port: int | None = None) -> None:
        """Start the process: from a spare when one can stand in for a fresh one
        (never under a debugger), else a fresh interpreter."""
        env = self.environment()
        self.spawned_at = time.monotonic()
        spare = (await spares.take(lambda s: self.can_start_from(s, env))
                 if spares is not None and debug_port is None else None)
        if spare is not None:
            self.proc, self.from_spare = spare.proc, True
            self.proc.stdin.write(Handover(env=env, cwd=str(self.spec.code_uri)).model_dump_json().encode() + b"\n")
            self.proc.stdin.close()
        else:
            self.debug_port = debug_port
            debug = ["--debug-port", str(debug_port)] if debug_port is not None else []
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime.functions.bootstrap", *debug, cwd=str(self.spec.code_uri),
                env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._readers = [asyncio.create_task(self._pipe(self.proc.stdout)),
                         asyncio.create_task(self._pipe(self.proc.stderr))]

    async def _pipe(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode(errors="replace").rstrip("\n")
            inv = self.current
            if inv is not None:
                inv.logs.append(text)
            self.log(LogLine(self.spec.name, text, inv.request_id if inv else None, self.version))

    # called by the Runtime API ---------------------------------------------------

    def polled(self) -> None:
        if self.init_duration_ms is None:
            self.init_duration_ms = (time.monotonic() - self.spawned_at) * 1000
            if not self.ready.done():
                self.ready.set_result(None)

    def init_failed(self, error: dict) -> None:
        self.init_error = error
        if not self.ready.done():
            self.ready.set_result(None)

    # -----------------------------------------------------------------------------

    async def wait_exit(self) -> int:
        assert self.proc is not None
        code = await self.proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)  # drain the last log lines
        return code

    async def stop(self, kill: bool = False) -> None:
        self.state = InstanceState.STOPPED
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    def max_memory_mb(self) -> int:
        """Peak resident memory of the instance (VmHWM), as Lambda's Max Memory Used."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
        except OSError:
            pass
        return 0
