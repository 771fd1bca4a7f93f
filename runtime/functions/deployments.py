"""Deployed versions of functions: content-addressed code bundles fetched from
S3, unpacked once, numbered per function, with one current version each
(what ``llmfn rollback`` moves). The record is a JSON file in the data dir, so
a restarted service comes back on the same versions."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.app.functions import FunctionSpec


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


def unpack(bundle: bytes, expected_sha: str, into: Path) -> Path:
    """Check a bundle's checksum and unpack it (once) into ``into/<sha>``."""
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
            for name in zf.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise DeployError(f"bundle entry {name!r} escapes the bundle")
            zf.extractall(tmp)
    except zipfile.BadZipFile:
        raise DeployError("bundle is not a zip file") from None
    tmp.rename(target)
    return target


def check_handler(code_dir: Path, handler: str) -> None:
    module = handler.rpartition(".")[0].replace(".", "/")
    if not ((code_dir / f"{module}.py").is_file() or (code_dir / module / "__init__.py").is_file()):
        raise DeployError(f"handler {handler}: {module}.py is not in the bundle")


class Deployments:
    def __init__(self, root: Path):
        self.root = Path(root)
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
        code_dir = unpack(data, sha, root)
        layers = [unpack(d, sha256_of(d), root) for d in (zip_dir(p) for p in spec.layers)]
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
    """The template's function with a deployed version's code and configuration."""
    cfg = version.config
    return base.model_copy(update={
        "code_uri": Path(version.code_dir), "layers": [Path(p) for p in version.layer_dirs],
        "handler": cfg.get("Handler", base.handler), "timeout": cfg.get("Timeout", base.timeout),
        "memory_size": cfg.get("MemorySize", base.memory_size),
        "environment": cfg.get("Environment", base.environment)})
