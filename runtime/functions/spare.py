"""Spare function interpreters: one ``bootstrap --spare`` process started ahead
of need, which has already paid for Python's start and the LLM layer's imports
(the openai SDK), so that a cold start only hands it a function's environment.

A spare is started with the service's allowlisted environment and nothing of
any function: no secret, no code, no Runtime API path. It is taken by one
instance, then refilled in the background. Owns the spares' processes; what an
instance's environment is stays in ``instance``, which decides whether a spare
can stand in for a fresh process."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

log = logging.getLogger("llmfn.functions")


class SpareReady(BaseModel):
    """A spare's first line on stdout: it has imported what every instance imports."""
    preloaded: list[str]  # its top-level modules beyond the standard library


class Handover(BaseModel):
    """The one line a spare reads on stdin: the function it becomes."""
    env: dict[str, str]  # its whole environment, replacing the spare's
    cwd: str


@dataclass
class Spare:
    """A ready spare interpreter and the non-stdlib modules it has imported."""
    proc: asyncio.subprocess.Process
    preloaded: frozenset[str]


class SpareInterpreters:
    """Keeps one spare ready while functions are served."""

    def __init__(self, environment: dict[str, str], *, refill_delay: float = 0.5):
        self.environment = environment  # the spare's own: allowlisted, no function's
        self.refill_delay = refill_delay  # after a take, not at once: the cold start goes first
        self._spare: asyncio.Task[Spare | None] | None = None
        self._closed = False
        self._spawning = False  # the current spare's process is starting (past its delay)

    def start(self) -> None:
        self._fill(0.0)

    def ready(self) -> bool:
        spare = self._spare
        return (spare is not None and spare.done() and not spare.cancelled()
                and spare.result() is not None and spare.result().proc.returncode is None)

    def current(self) -> Spare | None:
        """The ready spare, None without one (it stays here until taken)."""
        return self._spare.result() if self.ready() else None

    async def take(self, accept: Callable[[Spare], bool]) -> Spare | None:
        """The spare if ``accept`` takes it (a refill starts), else None. One still
        starting is waited for: it started earlier than a fresh one would."""
        task = self._spare
        if task is None or (not task.done() and not self._spawning):
            return None  # none, or a refill still in its delay: a fresh start is quicker
        self._spare = None  # claimed: a concurrent cold start does not wait for it too
        try:
            spare = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():  # the cold start was cancelled, not the spare
                self._keep(task)
                raise
            spare = None
        if spare is not None and spare.proc.returncode is None and not accept(spare):
            self._keep(task)  # not for this function: kept for the next cold start
            return None
        self._fill(self.refill_delay)
        return spare if spare is not None and spare.proc.returncode is None else None

    def _keep(self, task: asyncio.Task[Spare | None]) -> None:
        if self._spare is None and not self._closed:
            self._spare = task
        else:  # another one is on its way, or no more are wanted
            task.add_done_callback(lambda t: t.cancelled() or t.result() is None or t.result().proc.kill())

    def _fill(self, delay: float) -> None:
        if not self._closed:
            self._spawning = delay <= 0
            self._spare = asyncio.create_task(self._spawn(delay), name="spare-function-interpreter")

    async def _spawn(self, delay: float) -> Spare | None:
        await asyncio.sleep(delay)
        self._spawning = True
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime.functions.bootstrap", "--spare", cwd=os.path.abspath(os.sep),
                env=self.environment, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:  # cold starts go on with fresh interpreters
            log.warning("spare function interpreter could not start: %s", exc)
            return None
        try:
            ready = SpareReady.model_validate_json(await proc.stdout.readline())
        except (ValidationError, asyncio.CancelledError):
            await _end(proc)
            if self._closed:
                return None
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            log.warning("spare function interpreter failed to start: %s", err[-500:])
            return None
        return Spare(proc, frozenset(ready.preloaded))

    async def close(self) -> None:
        self._closed = True
        task, self._spare = self._spare, None
        if task is None:
            return
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            spare = await task
            if spare is not None:
                await _end(spare.proc)


async def _end(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
