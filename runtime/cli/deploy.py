"""``llmfn deploy``: build each function like ``sam build`` (its ``CodeUri`` plus
the packages of its ``requirements.txt``) and its layers into content-addressed
zips, upload what S3 does not have yet, and register the new versions with the
running service in one call (which switches them all, or none)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from runtime.functions.deployments import DeployError, check_handler, zip_dir
from runtime.template.function_spec import FunctionSpec
from runtime.template.reader import Template

_SKIP = {"__pycache__", ".pytest_cache", ".git"}


@dataclass
class Bundle:
    data: bytes
    sha256: str
    key: str


def _install_requirements(requirements: Path, target: Path, cache_root: Path) -> None:
    """pip-install a function's requirements next to its code, cached by their hash."""
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    cached = cache_root / digest
    if not cached.is_dir():
        tmp = cache_root / f".{digest}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(requirements), "--target", str(tmp)], check=True)
        tmp.rename(cached)
    shutil.copytree(cached, target, dirs_exist_ok=True)


def build_function(spec: FunctionSpec, cache_root: Path) -> Bundle:
    with tempfile.TemporaryDirectory(prefix=f"llmfn-build-{spec.name}-") as tmp:
        staging = Path(tmp)
        shutil.copytree(spec.code_uri, staging, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*_SKIP, "*.pyc"))
        requirements = spec.code_uri / "requirements.txt"
        if requirements.is_file():
            _install_requirements(requirements, staging, cache_root)
        data = zip_dir(staging)
    sha = hashlib.sha256(data).hexdigest()
    return Bundle(data, sha, f"llmfn/functions/{spec.name}/{sha}.zip")


def build_layer_bundle(path: Path) -> Bundle:
    data = zip_dir(path)
    sha = hashlib.sha256(data).hexdigest()
    return Bundle(data, sha, f"llmfn/layers/{path.name}/{sha}.zip")


def validate(template: Template) -> None:
    """Everything that can be checked before anything is uploaded."""
    if not template.functions:
        raise DeployError("the template has no functions")
    for spec in template.functions.values():
        if not spec.code_uri.is_dir():
            raise DeployError(f"Resources.{spec.name}.Properties.CodeUri: {spec.code_uri} is not a folder")
        check_handler(spec.code_uri, spec.handler)
        for layer in spec.layers:
            if not layer.is_dir():
                raise DeployError(f"Resources.{spec.name}.Properties.Layers: {layer} is not a folder")


def config_of(spec: FunctionSpec) -> dict:
    return {"Handler": spec.handler, "Timeout": spec.timeout, "MemorySize": spec.memory_size,
            "Environment": spec.environment}


def upload(fs, bucket: str, bundle: Bundle) -> bool:
    """Upload unless S3 already has this content; True when bytes were sent."""
    path = f"{bucket}/{bundle.key}"
    if fs.exists(path):
        return False
    fs.pipe_file(path, bundle.data)
    return True


def register(endpoint: str, bucket: str, entries: dict, admin_key: str | None) -> dict:
    req = urllib.request.Request(f"{endpoint.rstrip('/')}/llmfn/deployments", method="POST",
                                 data=json.dumps({"bucket": bucket, "functions": entries}).encode(),
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {admin_key}"} if admin_key else {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as resp:
            return json.loads(resp.read())["functions"]
    except urllib.error.HTTPError as err:
        try:
            detail = json.loads(err.read() or b"{}").get("Message", err.reason)
        except (ValueError, AttributeError):  # not the Lambda API's JSON (a proxy, a size limit)
            detail = f"HTTP {err.code} {err.reason}"
        raise DeployError(detail) from None
    except urllib.error.URLError as err:
        raise DeployError(f"cannot reach the service at {endpoint}: {err.reason}") from None


def deploy_template(template: Template, *, bucket: str, endpoint: str, fs, cache_root: Path,
           admin_key: str | None = None, out=sys.stderr) -> dict:
    validate(template)
    entries, uploaded = {}, 0
    layer_bundles: dict[Path, Bundle] = {}
    for spec in template.functions.values():
        bundle = build_function(spec, cache_root)
        layers = [layer_bundles.setdefault(p, build_layer_bundle(p)) for p in spec.layers]
        uploaded += sum(upload(fs, bucket, b) for b in [bundle, *layers])
        entries[spec.name] = {"key": bundle.key, "sha256": bundle.sha256, "config": config_of(spec),
                              "layers": [{"key": b.key, "sha256": b.sha256} for b in layers]}
    result = register(endpoint, bucket, entries, admin_key)
    print(f"uploaded {uploaded} new bundle(s) to s3://{bucket}/llmfn/", file=out)
    for name, r in result.items():
        state = "updated" if r["changed"] else "unchanged"
        print(f"  {name:<28} version {r['version']:<4} {state:<10} sha256 {r['sha256'][:12]}", file=out)
    return result
