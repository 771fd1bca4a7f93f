"""The deployments registry on a SQLite file and on PostgreSQL: versions numbered
per function, an unchanged deploy that keeps its version, rollback, a registry
that outlives the service, an older deployments.json taken in once, and two
replicas on one database that follow each other's deploys and rollbacks."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import boto3
import pytest
import s3fs

from runtime.functions import DeployError, Deployments, FunctionHost, StagedBundle
from runtime.functions.deployments import Registration, sha256_of, zip_dir
from runtime.gateway.auth import InvocationTokens
from runtime.template.function_spec import FunctionSpec
from tests.support.cli import wait_until_async

SHA_A, SHA_B = "a" * 64, "b" * 64


@pytest.fixture
def registry(tmp_path, db_target):
    """``registry(host)``: a host's registry (its own bundles folder) on the test's one database."""
    opened: list[Deployments] = []

    def open_(host: str = "host") -> Deployments:
        opened.append(Deployments(tmp_path / host / "deployments", db_target("deployments.sqlite3")))
        return opened[-1]
    yield open_
    for deployments in opened:
        deployments.close()


def test_versions_are_numbered_per_function_and_an_unchanged_deploy_keeps_its_version(registry):
    deployments = registry()
    [(v1, changed)] = deployments.register({"Fn": Registration(SHA_A)}).values()
    assert (v1.version, changed) == (1, True)
    [(same, changed)] = deployments.register({"Fn": Registration(SHA_A)}).values()
    assert (same.version, changed) == (1, False)
    registered = deployments.register({"Fn": Registration(SHA_A, config={"Timeout": 9}),
                                       "Other": Registration(SHA_B, layers=[SHA_A])})
    assert {name: (v.version, changed) for name, (v, changed) in registered.items()} == \
        {"Fn": (2, True), "Other": (1, True)}
    assert deployments.current("Fn").config == {"Timeout": 9}
    assert deployments.current("Other").layer_dirs == [str(deployments.bundles / SHA_A)]


def test_rollback_moves_to_the_version_before_and_refuses_what_does_not_exist_or_cannot_run(registry):
    deployments = registry()
    for sha in (SHA_A, SHA_B, "c" * 64):
        deployments.register({"Fn": Registration(sha)})
    assert deployments.set_current("Fn").version == 2
    assert deployments.set_current("Fn").version == 1
    with pytest.raises(DeployError, match="on its first version"):
        deployments.set_current("Fn")
    with pytest.raises(DeployError, match=r"no deployed version 7 \(deployed: \[1, 2, 3\]\)"):
        deployments.set_current("Fn", 7)

    def cannot_run(version):
        raise DeployError("Resources.Fn.Properties.Timeout: too long")
    with pytest.raises(DeployError, match="Timeout"):
        deployments.set_current("Fn", 3, check=cannot_run)
    assert deployments.current("Fn").version == 1  # a version that cannot run is not made current
    assert deployments.set_current("Fn", 3).sha256 == "c" * 64


def test_the_registry_outlives_the_service(registry):
    first = registry()
    first.register({"Fn": Registration(SHA_A, config={"MemorySize": 256})})
    first.register({"Fn": Registration(SHA_B)})
    first.set_current("Fn", 1)
    first.close()
    again = registry()
    assert again.current("Fn").version == 1 and again.current("Fn").config == {"MemorySize": 256}
    assert sorted(again.functions["Fn"].versions) == [1, 2]


def test_a_deployments_json_from_before_is_taken_in_once_and_left_in_place(registry, tmp_path):
    bundles = tmp_path / "host" / "deployments" / "bundles"
    older = {"Fn": {"current": 2, "versions": {
        "1": {"version": 1, "sha256": SHA_A, "code_dir": str(bundles / SHA_A), "layer_dirs": [], "config": {},
              "created": 1.0},
        "2": {"version": 2, "sha256": SHA_B, "code_dir": str(bundles / SHA_B),
              "layer_dirs": [str(bundles / ("c" * 64))], "config": {"Timeout": 5}, "created": 2.0}}}}
    state = tmp_path / "host" / "deployments" / "deployments.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps(older))
    deployments = registry()
    assert deployments.current("Fn").version == 2 and deployments.current("Fn").config == {"Timeout": 5}
    assert deployments.current("Fn").code_dir == str(bundles / SHA_B)
    assert deployments.current("Fn").layer_dirs == [str(bundles / ("c" * 64))]
    assert state.is_file()
    deployments.set_current("Fn", 1)
    deployments.close()
    assert registry().current("Fn").version == 1  # not taken in again


# --- replicas that follow each other through the registry ---------------------------

def _spec(code: Path) -> FunctionSpec:
    return FunctionSpec(name="Fn", code_uri=code, handler="app.handler")


async def _replica(code: Path, deployments: Deployments, endpoint: str) -> FunctionHost:
    """A started host (no instance starts until an invocation) that fetches bundles from S3."""
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)

    async def fetch(bucket: str, key: str) -> bytes:
        return await asyncio.to_thread(fs.cat_file, f"{bucket}/{key}")

    host = FunctionHost({"Fn": _spec(code)}, gateway_url="http://127.0.0.1:0", tokens=InvocationTokens(),
                        deployments=deployments, spare=False, fetch=fetch, watch_s=0.05)
    await host.start()
    return host


def _bundle(tmp_path: Path, body: str) -> tuple[bytes, str]:
    src = tmp_path / f"build-{sha256_of(body.encode())[:8]}"
    src.mkdir()
    (src / "app.py").write_text(body)
    data = zip_dir(src)
    return data, sha256_of(data)


async def test_a_deploy_or_rollback_through_one_replica_switches_the_other(registry, tmp_path, s3_server, s3_bucket):
    code = tmp_path / "src"
    code.mkdir()
    (code / "app.py").write_text("def handler(event, context):\n    return 'v1'\n")
    one = await _replica(code, registry("one"), s3_server)
    two = await _replica(code, registry("two"), s3_server)
    try:
        data, sha = _bundle(tmp_path, "def handler(event, context):\n    return 'v2'\n")
        key = f"llmfn/functions/Fn/{sha}.zip"
        boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=s3_bucket, Key=key, Body=data)
        out = await one.deploy({"Fn": StagedBundle(data, sha, sources={sha: f"s3://{s3_bucket}/{key}"})})
        assert out["Fn"]["version"] == 2

        pool = two.dispatcher.pool("Fn")
        await _until(lambda: pool.version == 2)
        assert pool.spec.code_uri == two.deployments.bundles / sha  # fetched from S3 onto this host
        assert (pool.spec.code_uri / "app.py").read_text().endswith("return 'v2'\n")
        assert two.versions("Fn")["current"] == 2

        assert await two.rollback("Fn") == {"version": 1}
        await _until(lambda: one.dispatcher.pool("Fn").version == 1)
        assert one.dispatcher.pool("Fn").spec.code_uri == Path(one.deployments.current("Fn").code_dir)
    finally:
        await one.close()
        await two.close()


async def _until(predicate) -> None:
    await wait_until_async(predicate, timeout=10, message="the other replica did not follow")
