"""Deployed versions of functions: content-addressed code bundles fetched from
S3, unpacked once per host, numbered per function, with one current version
each (what ``llmfn rollback`` moves). The registry (which versions exist, which
is current, their configuration and checksums) lives in the database
(``runtime.database``: a SQLite file of the data dir, or the PostgreSQL database
replicas share), so a restarted service comes back on the same versions and
every replica serves the same ones. The bundles stay on each host's disk.

It must not start instances or talk to S3: ``FunctionHost`` applies versions
and fetches the bundles a host lacks."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import stat
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.database import (
    Connection,
    SharedConnection,
    Target,
    migration_lock,
    schema_version,
    set_schema_version,
)
from runtime.template.function_spec import FunctionSpec, TemplateError, with_config

log = logging.getLogger("llmfn.functions")

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_SKIP = {"__pycache__", ".pytest_cache", ".git"}


def zip_dir(root: Path) -> bytes:
    """A deterministic zip: same files, same bytes (so the same checksum)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root)
            if _SKIP & set(rel.parts) or path.suffix == ".pyc":
                continue
            info = zipfile.ZipInfo(rel.as_posix(), _FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()



class DeployError(ValueError):
    """A deployment that fails validation; nothing was changed."""


@dataclass
class Version:
    version: int
    sha256: str
    code_dir: str
    layer_dirs: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # Handler, Timeout, MemorySize, Environment
    created: float = field(default_factory=time.time)


@dataclass
class FunctionVersions:
    current: int
    versions: dict[int, Version]


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BundleLimits:
    """What one bundle may hold. The defaults are Lambda's (50 MB zipped, 250 MB
    unzipped); the entry count keeps a zip of empty files from costing inodes."""
    max_bytes: int = 50 * 2**20
    max_unzipped_bytes: int = 250 * 2**20
    max_entries: int = 20_000


def unpack(bundle: bytes, expected_sha: str, into: Path, limits: BundleLimits = BundleLimits()) -> Path:
    """Check a bundle's checksum and limits and unpack it (once) into ``into/<sha>``."""
    if len(bundle) > limits.max_bytes:
        raise DeployError(f"bundle is {len(bundle)} bytes; the limit is {limits.max_bytes}")
    actual = sha256_of(bundle)
    if actual != expected_sha:
        raise DeployError(f"bundle checksum mismatch: expected {expected_sha[:12]}…, got {actual[:12]}…")
    target = into / actual
    if target.is_dir():
        return target
    tmp = into / f".{actual}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
            _extract(zf, tmp, limits)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DeployError(f"bundle is not a readable zip file ({type(exc).__name__})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.rename(target)
    return target


def _extract(zf: zipfile.ZipFile, into: Path, limits: BundleLimits) -> None:
    """Extract every entry, refusing the whole bundle on the first one past a limit."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise DeployError(f"bundle has {len(infos)} entries; the limit is {limits.max_entries}")
    if sum(info.file_size for info in infos) > limits.max_unzipped_bytes:
        raise DeployError(f"bundle unzips to more than {limits.max_unzipped_bytes} bytes")
    budget = limits.max_unzipped_bytes
    for info in infos:
        dest = _entry_path(info, into)
        if info.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Counted while writing: a zip bomb's headers may understate what it inflates to.
        with zf.open(info) as src, open(dest, "wb") as out:
            while chunk := src.read(1 << 20):
                budget -= len(chunk)
                if budget < 0:
                    raise DeployError(f"bundle unzips to more than {limits.max_unzipped_bytes} bytes")
                out.write(chunk)


def _entry_path(info: zipfile.ZipInfo, into: Path) -> Path:
    name = info.filename
    parts = Path(name.replace("\\", "/")).parts
    if (name.startswith(("/", "\\")) or ".." in parts or ":" in name or "\0" in name
            or stat.S_ISLNK(info.external_attr >> 16)):
        raise DeployError(f"bundle entry {name!r} escapes the bundle")
    return into.joinpath(*parts)


def check_handler(code_dir: Path, handler: str) -> None:
    module = handler.rpartition(".")[0].replace(".", "/")
    if not ((code_dir / f"{module}.py").is_file() or (code_dir / module / "__init__.py").is_file()):
        raise DeployError(f"handler {handler}: {module}.py is not in the bundle")


COMPONENT = "deployments"
SCHEMA_VERSION = 1


def _schema(conn: Connection) -> list[str]:
    real = conn.dialect.real
    return [
        f"""CREATE TABLE IF NOT EXISTS deployed_versions (
            function  TEXT NOT NULL,
            version   INTEGER NOT NULL,
            sha256    TEXT NOT NULL,
            layers    TEXT NOT NULL,
            config    TEXT NOT NULL,
            created   {real} NOT NULL,
            PRIMARY KEY (function, version))""",
        "CREATE TABLE IF NOT EXISTS deployed_current (function TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        # where a bundle came from (s3://bucket/key): a replica without it fetches it there
        "CREATE TABLE IF NOT EXISTS deployed_bundles (sha256 TEXT PRIMARY KEY, location TEXT NOT NULL)",
        # one row, one more at every change: what replicas watch
        "CREATE TABLE IF NOT EXISTS deployment_changes (id INTEGER PRIMARY KEY, generation INTEGER NOT NULL)",
        "INSERT INTO deployment_changes (id, generation) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
    ]


@dataclass(frozen=True)
class Registration:
    """One function's new version as a deploy registers it: its code and layers by
    checksum, its configuration, and where each bundle can be fetched (sha256 ->
    ``s3://bucket/key``) by a replica that does not have it."""
    sha256: str
    layers: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


class Deployments:
    """The registry of deployed versions, in a SQLite file or the PostgreSQL database
    that replicas share, with the bundles unpacked on this host under ``root/bundles``
    (by checksum). ``functions`` is the registry as last read; ``refresh`` reads it
    again when another replica changed it. Every method but ``current`` and
    ``functions`` blocks on the database: async callers run them in an executor."""

    def __init__(self, root: Path, database: Target, limits: BundleLimits = BundleLimits()):
        self.root = Path(root)
        self.limits = limits
        self.root.mkdir(parents=True, exist_ok=True)
        self.bundles = self.root / "bundles"
        self.functions: dict[str, FunctionVersions] = {}
        self.generation = -1
        self._shared = SharedConnection(database)
        with self._locked(), self._db.transaction():
            migration_lock(self._db, COMPONENT)
            if schema_version(self._db, COMPONENT) < SCHEMA_VERSION:
                self._db.script(_schema(self._db))
                set_schema_version(self._db, COMPONENT, SCHEMA_VERSION)
        self._import_json(self.root / "deployments.json")
        self.refresh()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the one connection (executor threads share it) as ``self._db`` for the block."""
        with self._shared.use() as self._db:
            yield

    def close(self) -> None:
        self._shared.close()

    def current(self, name: str) -> Version | None:
        fv = self.functions.get(name)
        return fv.versions[fv.current] if fv else None

    # ---- reading ------------------------------------------------------------------

    def refresh(self) -> bool:
        """Read the registry again if it changed since last read; whether it had."""
        with self._locked():
            generation = self._generation()
            if generation == self.generation:
                return False
            # current first: versions are only ever added, so every version it names is read next
            current = dict(self._db.execute("SELECT function, version FROM deployed_current").fetchall())
            versions = self._db.execute("SELECT function, version, sha256, layers, config, created "
                                        "FROM deployed_versions").fetchall()
        functions: dict[str, FunctionVersions] = {}
        for name, number, sha, layers, config, created in versions:
            fv = functions.setdefault(name, FunctionVersions(current.get(name, number), {}))
            fv.versions[number] = Version(number, sha, str(self.bundles / sha),
                                          [str(self.bundles / layer) for layer in json.loads(layers)],
                                          json.loads(config), created)
        self.functions, self.generation = functions, generation
        return True

    def _generation(self) -> int:
        return self._db.execute("SELECT generation FROM deployment_changes WHERE id = 1").fetchone()[0]

    def missing(self, version: Version) -> list[str]:
        """The checksums of ``version``'s bundles not unpacked on this host."""
        return [Path(d).name for d in (version.code_dir, *version.layer_dirs) if not Path(d).is_dir()]

    def sources(self, shas: list[str]) -> dict[str, str]:
        """Where the bundles of these checksums were deployed from (``s3://bucket/key``)."""
        with self._locked():
            rows = [self._db.execute("SELECT sha256, location FROM deployed_bundles WHERE sha256 = ?",
                                     (sha,)).fetchone() for sha in shas]
        return dict(row for row in rows if row)

    def install(self, sha: str, bundle: bytes) -> Path:
        """Unpack a fetched bundle here, checked against its checksum and the limits."""
        self.bundles.mkdir(parents=True, exist_ok=True)
        return unpack(bundle, sha, self.bundles, self.limits)

    # ---- writing ------------------------------------------------------------------

    def snapshot(self, spec: FunctionSpec) -> None:
        """Version 1 is the template's code as it was when the service first started,
        kept immutable so a rollback to it gives that code back. Each host unpacks
        its own template's code; the first replica to start registers it."""
        registered = self.functions.get(spec.name)
        first = registered.versions.get(1) if registered else None
        if first is not None and not self.missing(first):
            return
        data = zip_dir(spec.code_uri)
        sha = sha256_of(data)
        layers = [self.install(sha256_of(d), d).name for d in (zip_dir(p) for p in spec.layers)]
        self.install(sha, data)
        if registered is not None:
            return
        with self._locked(), self._db.transaction():
            self._bump()
            self._db.execute("INSERT INTO deployed_versions (function, version, sha256, layers, config, created) "
                             "VALUES (?, 1, ?, ?, '{}', ?) ON CONFLICT (function, version) DO NOTHING",
                             (spec.name, sha, json.dumps(layers), time.time()))
            self._db.execute("INSERT INTO deployed_current (function, version) VALUES (?, 1) "
                             "ON CONFLICT (function) DO NOTHING", (spec.name,))
        self.refresh()

    def register(self, changes: Mapping[str, Registration]) -> dict[str, tuple[Version, bool]]:
        """New current versions for several functions at once (all or none), each with
        whether it changed: a function whose code, layers and configuration are its
        current version's keeps that version."""
        out: dict[str, tuple[int, bool]] = {}
        with self._locked(), self._db.transaction():
            self._bump()  # first: it also makes concurrent registrations wait for this one
            for name, new in changes.items():
                out[name] = self._register(name, new)
            for sha, location in {s: loc for new in changes.values() for s, loc in new.sources.items()}.items():
                self._db.execute("INSERT INTO deployed_bundles (sha256, location) VALUES (?, ?) ON CONFLICT "
                                 "(sha256) DO UPDATE SET location = excluded.location", (sha, location))
        self.refresh()
        return {name: (self.functions[name].versions[number], changed) for name, (number, changed) in out.items()}

    def _register(self, name: str, new: Registration) -> tuple[int, bool]:
        current = self._db.execute(
            "SELECT v.version, v.sha256, v.layers, v.config FROM deployed_current c JOIN deployed_versions v "
            "ON v.function = c.function AND v.version = c.version WHERE c.function = ?", (name,)).fetchone()
        if current is not None and (current[1], json.loads(current[2]), json.loads(current[3])) == (
                new.sha256, new.layers, new.config):
            return current[0], False
        number = self._db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM deployed_versions "
                                  "WHERE function = ?", (name,)).fetchone()[0]
        self._db.execute("INSERT INTO deployed_versions (function, version, sha256, layers, config, created) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (name, number, new.sha256, json.dumps(new.layers), json.dumps(new.config), time.time()))
        self._set_current(name, number)
        return number, True

    def set_current(self, name: str, number: int | None = None, *,
                    check: Callable[[Version], object] | None = None) -> Version:
        """Make version ``number`` current (None: the one before the current one), after
        ``check`` (which raises for a version that could not run)."""
        with self._locked(), self._db.transaction():
            self._bump()
            rows = self._db.execute("SELECT version FROM deployed_versions WHERE function = ? ORDER BY version",
                                    (name,)).fetchall()
            known = [row[0] for row in rows]
            if number is None:
                row = self._db.execute("SELECT version FROM deployed_current WHERE function = ?", (name,)).fetchone()
                older = [v for v in known if row and v < row[0]]
                if not older:
                    raise DeployError(f"{name} is on its first version; nothing to roll back to")
                number = older[-1]
            if number not in known:
                raise DeployError(f"{name} has no deployed version {number} (deployed: {known or 'none'})")
            if check is not None:
                check(self._version(name, number))
            self._set_current(name, number)
        self.refresh()
        return self.functions[name].versions[number]

    def _version(self, name: str, number: int) -> Version:
        sha, layers, config, created = self._db.execute(
            "SELECT sha256, layers, config, created FROM deployed_versions WHERE function = ? AND version = ?",
            (name, number)).fetchone()
        return Version(number, sha, str(self.bundles / sha), [str(self.bundles / s) for s in json.loads(layers)],
                       json.loads(config), created)

    def _set_current(self, name: str, number: int) -> None:
        self._db.execute("INSERT INTO deployed_current (function, version) VALUES (?, ?) "
                         "ON CONFLICT (function) DO UPDATE SET version = excluded.version", (name, number))

    def _bump(self) -> None:
        self._db.execute("UPDATE deployment_changes SET generation = generation + 1 WHERE id = 1")

    def _import_json(self, path: Path) -> None:
        """The registry an older llmfn kept in ``deployments.json``, taken into an empty
        database once (the file is left in place). Its bundles are already here."""
        if not path.is_file():
            return
        raw = json.loads(path.read_text())
        with self._locked(), self._db.transaction():
            self._bump()
            if self._db.execute("SELECT COUNT(*) FROM deployed_current").fetchone()[0]:
                return
            for name, fv in raw.items():
                self._db.executemany(
                    "INSERT INTO deployed_versions (function, version, sha256, layers, config, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(name, int(number), v["sha256"], json.dumps([Path(d).name for d in v.get("layer_dirs", [])]),
                      json.dumps(v.get("config", {})), v.get("created", time.time()))
                     for number, v in fv["versions"].items()])
                self._set_current(name, int(fv["current"]))
        log.info("deployments: imported %d function(s) from %s", len(raw), path)


def spec_of(base: FunctionSpec, version: Version) -> FunctionSpec:
    """The template's function with a deployed version's code and configuration,
    validated by the template's model (``DeployError`` naming the property)."""
    try:
        spec = with_config(base, version.config)
    except TemplateError as exc:
        raise DeployError(f"Resources.{base.name}.Properties.{exc}") from None
    return spec.model_copy(update={"code_uri": Path(version.code_dir),
                                   "layers": [Path(p) for p in version.layer_dirs]})
