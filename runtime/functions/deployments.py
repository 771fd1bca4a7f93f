"""Deployed versions of functions: content-addressed code bundles fetched from
S3, unpacked once, numbered per function, with one current version each
(what ``llmfn rollback`` moves). The record is a JSON file in the data dir, so
a restarted service comes back on the same versions."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.template.function_spec import FunctionSpec, TemplateError, with_config

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


class Deployments:
    def __init__(self, root: Path, limits: BundleLimits = BundleLimits()):
        self.root = Path(root)
        self.limits = limits
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file = self.root / "deployments.json"
        self.functions: dict[str, FunctionVersions] = self._load()

    def _load(self) -> dict[str, FunctionVersions]:
        if not self.state_file.exists():
            return {}
        raw = json.loads(self.state_file.read_text())
        return {name: FunctionVersions(v["current"], {int(k): Version(**ver) for k, ver in v["versions"].items()})
                for name, v in raw.items()}

    def save(self) -> None:
        raw = {name: {"current": fv.current, "versions": {str(k): asdict(v) for k, v in fv.versions.items()}}
               for name, fv in self.functions.items()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw, indent=1))
        tmp.replace(self.state_file)

    def current(self, name: str) -> Version | None:
        fv = self.functions.get(name)
        return fv.versions[fv.current] if fv else None

    def snapshot(self, spec: FunctionSpec) -> None:
        """Version 1 is the template's code as it was when the service first started,
        kept immutable so a rollback to it gives that code back."""
        if spec.name in self.functions:
            return
        data = zip_dir(spec.code_uri)
        sha = sha256_of(data)
        root = self.root / "bundles"
        root.mkdir(parents=True, exist_ok=True)
        code_dir = unpack(data, sha, root, self.limits)
        layers = [unpack(d, sha256_of(d), root, self.limits) for d in (zip_dir(p) for p in spec.layers)]
        self.functions[spec.name] = FunctionVersions(1, {1: Version(
            1, sha, str(code_dir), [str(p) for p in layers], {})})
        self.save()

    def add(self, name: str, sha: str, code_dir: Path, layer_dirs: list[Path], config: dict) -> tuple[Version, bool]:
        """A new current version, or the current one again when nothing changed."""
        fv = self.functions.get(name)
        cur = self.current(name)
        layers = [str(p) for p in layer_dirs]
        if cur is not None and cur.sha256 == sha and cur.layer_dirs == layers and cur.config == config:
            return cur, False
        number = max(fv.versions, default=0) + 1 if fv else 1
        version = Version(number, sha, str(code_dir), layers, config)
        if fv is None:
            fv = self.functions[name] = FunctionVersions(number, {})
        fv.versions[number] = version
        fv.current = number
        return version, True

    def set_current(self, name: str, number: int) -> Version:
        fv = self.functions.get(name)
        if fv is None or number not in fv.versions:
            known = sorted(fv.versions) if fv else []
            raise DeployError(f"{name} has no deployed version {number} (deployed: {known or 'none'})")
        fv.current = number
        return fv.versions[number]


def spec_of(base: FunctionSpec, version: Version) -> FunctionSpec:
    """The template's function with a deployed version's code and configuration,
    validated by the template's model (``DeployError`` naming the property)."""
    try:
        spec = with_config(base, version.config)
    except TemplateError as exc:
        raise DeployError(f"Resources.{base.name}.Properties.{exc}") from None
    return spec.model_copy(update={"code_uri": Path(version.code_dir),
                                   "layers": [Path(p) for p in version.layer_dirs]})
