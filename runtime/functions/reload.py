"""Hot reload: watches the template, each function's ``CodeUri`` and its layers,
and has the next invocation run the new code with no restart, through the
version swap deploys use (``FunctionPool.deploy``): invocations in flight
finish on the old code. A template is re-read by the one reader; one that fails
validation keeps the old version serving. What the running parts were wired
from (which functions exist, their events and routes, their ``Metadata.llmfn``,
the models) is not changed live: a log line says it needs a restart.

It must not block the event loop: watchfiles watches in its own thread, and the
template is read in an executor. It parses nothing itself."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from watchfiles import DefaultFilter, awatch

from runtime.errors import TemplateError
from runtime.functions.host import FunctionHost
from runtime.template import Template
from runtime.template.function_spec import FunctionSpec

log = logging.getLogger("llmfn.reload")

# What a reload changes for the next invocation; the rest of a function needs a restart.
LIVE = ("code_uri", "handler", "runtime", "timeout", "memory_size", "environment", "layers")
RESTART = {"events": "events", "invoke_config": "EventInvokeConfig", "llm": "Metadata.llmfn"}
# An editor saving several files: changes are grouped until none came for STEP_MS (at most DEBOUNCE_MS).
STEP_MS, DEBOUNCE_MS = 200, 1600


def live_spec(running: FunctionSpec, new: FunctionSpec) -> FunctionSpec:
    """The running function with the new template's code and configuration."""
    return running.model_copy(update={f: getattr(new, f) for f in LIVE})


def needs_restart(old: Template, new: Template) -> list[str]:
    """What differs between two templates that a reload leaves as it was."""
    out = [f"function {n} added" for n in new.functions if n not in old.functions]
    out += [f"function {n} removed" for n in old.functions if n not in new.functions]
    for name, spec in old.functions.items():
        if (other := new.functions.get(name)) is not None:
            out += [f"{what} of {name}" for f, what in RESTART.items() if getattr(spec, f) != getattr(other, f)]
    if old.models != new.models:
        out.append("models")
    return out


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


class Reloader:
    """Started and stopped with the server; ``apply`` is one reload (the watcher's, or a test's)."""

    def __init__(self, host: FunctionHost, template: Template, template_path: Path,
                 read: Callable[[], Template], *, ignore: Iterable[Path] = ()):
        self.host = host
        self.template = template  # the template as last read
        self.wired = template  # what the running parts (routes, triggers, quotas) were built from
        self.template_path = template_path.resolve()
        self.read = read  # the one template reader, as the server was configured
        self.ignore = [Path(p).resolve() for p in ignore]  # e.g. a data dir inside a CodeUri
        self._stop = asyncio.Event()  # every watcher
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []
        self._code: tuple[list[Path], asyncio.Event] = ([], asyncio.Event())  # what the code watcher watches

    def _code_roots(self) -> list[Path]:
        paths = {p.resolve() for s in self.host.functions.values() for p in (s.code_uri, *s.layers)}
        return sorted(p for p in paths if p.is_dir() and not _under(p, paths - {p}))

    async def start(self) -> None:
        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # our own lines say what a change did
        # Two watchers: the template's folder alone (it may hold a data dir or anything
        # else), and the code and layer folders with everything in them.
        self._tasks = [asyncio.create_task(self._watch([self.template_path.parent], self._stop, recursive=False))]
        self._watch_code()

    def _watch_code(self) -> None:
        """(Re)start the code watcher when the folders to watch changed (a new CodeUri or layer)."""
        roots, stop = self._code
        if (new := self._code_roots()) == roots:
            return
        stop.set()  # never awaited here: the old watcher may be the one calling
        self._code = (new, asyncio.Event())
        if new:
            self._tasks.append(asyncio.create_task(self._watch(new, self._code[1], recursive=True)))

    async def close(self) -> None:
        self._stop.set()
        self._code[1].set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 5)
        self._tasks.clear()

    async def _watch(self, paths: list[Path], stop: asyncio.Event, *, recursive: bool) -> None:
        watch_filter = DefaultFilter(ignore_paths=[str(p) for p in self.ignore])
        async for changes in awatch(*paths, watch_filter=watch_filter, recursive=recursive, step=STEP_MS,
                                    debounce=DEBOUNCE_MS, stop_event=stop):
            try:
                await self.apply({Path(p).resolve() for _, p in changes})
            except Exception:  # the watcher outlives one reload that went wrong
                log.exception("reload failed; still serving the previous version")

    async def apply(self, changed: set[Path]) -> None:
        async with self._lock:
            template = self.template
            if self.template_path in changed:
                try:
                    template = await asyncio.get_running_loop().run_in_executor(None, self.read)
                except (TemplateError, ValueError) as exc:
                    log.warning("reload: %s is not valid, still serving the previous version: %s",
                                self.template_path, exc)
                    return
                if later := needs_restart(self.wired, template):
                    log.warning("reload: %s: not applied until a restart: %s", self.template_path,
                                ", ".join(later))
                self.template = template
            for name in list(self.host.functions):
                if (new := template.functions.get(name)) is not None:
                    self._reload(name, new, changed)
            if self._tasks:  # started: watch the folders the functions now use
                self._watch_code()

    def _reload(self, name: str, new: FunctionSpec, changed: set[Path]) -> None:
        running = self.host.functions[name]
        spec = live_spec(running, new)
        touched = _under_any(changed, [p.resolve() for p in (spec.code_uri, *spec.layers)])
        if spec == running and not touched:
            return
        if self.host.reload(name, spec):
            log.info("reload: function %s: new invocations run the changed code", name)
        else:
            log.info("reload: function %s runs a deployed version; local changes are not applied", name)


def _under_any(paths: Iterable[Path], roots: list[Path]) -> bool:
    return any(_under(p, roots) for p in paths)


__all__ = ["LIVE", "Reloader", "live_spec", "needs_restart"]
