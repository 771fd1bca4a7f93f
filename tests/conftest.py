"""Fixtures shared by the unit, integration and end-to-end tests: the model
cache, gateways on loopback, moto's S3 server, Redis, an ``llmfn``
environment. Also marks every test that loads a model ``llama`` (see
``tests/support/llama.py``), and in a run without them (``make test-fast``)
fails any test that starts a llama.cpp worker all the same."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid

import openai
import pytest

from runtime.pool import ModelStore
from runtime.pool.tokenizer import ModelTokenizer
from tests.support.cli import free_port, need_binary, wait_until
from tests.support.gateway import MODEL, GatewayThread, model
from tests.support.grammar_check import GrammarChecker, embedded_tokenizer
from tests.support.llama import MODEL_FIXTURES, WorkerWatch, loads_model
from tests.support.moto_server import AWS_ENV_TO_CLEAR, DUMMY_AWS_ENV, start_moto_server
from tests.support.postgres import PostgresServer

# ---- which tests load a model --------------------------------------------------

def pytest_collection_modifyitems(config, items):
    for item in items:
        if _uses_model_fixture(item):
            item.add_marker(pytest.mark.llama)


def _uses_model_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    # the fixture each name resolves to for this test (a module may define its own of that name)
    return any(defs and defs[-1].func in MODEL_FIXTURES
               for name in info.names_closure if (defs := info.name2fixturedefs.get(name)))


def _fast_run(config) -> bool:
    return "not llama" in (config.getoption("markexpr") or "")


@pytest.fixture(scope="session")
def _worker_watch(request):
    if not _fast_run(request.config):
        yield None
        return
    watch = WorkerWatch()
    watch.start()
    yield watch
    watch.stop()


@pytest.fixture(autouse=True)
def _no_worker_unless_marked(request, _worker_watch):
    """In the fast run, a test that starts a llama.cpp worker fails: it should be marked llama."""
    yield
    if _worker_watch is not None and (started := _worker_watch.take()):
        pytest.fail(f"a llama.cpp worker started in a test not marked llama: {sorted(started)}")


# ---- the model -----------------------------------------------------------------

@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One model cache for the whole run, so the embedded GGUF is assembled once."""
    cache = tmp_path_factory.mktemp("models")
    asyncio.run(ModelStore(cache, show_progress=False).fetch(MODEL, "embedded"))
    return cache


@pytest.fixture(scope="session")
@loads_model
def tokenizer(model_cache) -> ModelTokenizer:
    path = asyncio.run(ModelStore(model_cache, show_progress=False).fetch(MODEL, "embedded")).path
    return ModelTokenizer(str(path))


@pytest.fixture(scope="session")
@loads_model
def checker(model_cache) -> GrammarChecker:
    """llama.cpp's own grammar parser and sampler over the embedded model's vocabulary."""
    return GrammarChecker(embedded_tokenizer(str(model_cache)))


@pytest.fixture
def env(model_cache, tmp_path) -> dict[str, str]:
    """The environment of an ``llmfn`` subprocess: the shared model cache, a data dir of its own."""
    return {"LLMFN_CACHE_DIR": str(model_cache), "LLMFN_DATA_DIR": str(tmp_path / "data")}


# ---- gateways: llama.cpp on the embedded GGUF, on loopback, the openai SDK as client ----

@pytest.fixture
@loads_model
def make_gateway(model_cache):
    """Start gateways with given models; all are stopped (and their workers) at the end."""
    started: list[GatewayThread] = []

    def make(*models, api_keys=(), s3_endpoint_url=None, **config) -> GatewayThread:
        store = ModelStore(model_cache, s3_endpoint_url=s3_endpoint_url, show_progress=False)
        gw = GatewayThread(list(models) or [model()], store, api_keys=api_keys, **config).__enter__()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.__exit__(None, None, None)


@pytest.fixture(scope="module")
@loads_model
def gateway(model_cache):
    """A shared gateway serving the embedded model, for the API tests."""
    store = ModelStore(model_cache, show_progress=False)
    with GatewayThread([model(max_workers=1)], store) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)


# ---- S3 and Redis ----------------------------------------------------------------

@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """Endpoint URL of moto's S3 server on loopback, with dummy AWS credentials in the env."""
    no_aws_files = tmp_path_factory.mktemp("aws") / "absent"
    with pytest.MonkeyPatch.context() as env:
        for name, value in DUMMY_AWS_ENV.items():
            env.setenv(name, value)
        for name in AWS_ENV_TO_CLEAR:
            env.delenv(name, raising=False)
        env.setenv("AWS_CONFIG_FILE", str(no_aws_files))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(no_aws_files))
        server = start_moto_server()
        try:
            yield server.endpoint_url
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, empty bucket on the moto server; yields its name."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


@pytest.fixture
def redis_url(tmp_path):
    """A real redis-server of its own, on a free loopback port."""
    binary = need_binary("redis-server")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: _accepts(port), 10, message="redis-server did not start")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


# ---- PostgreSQL: the shared stores' other database -------------------------------

@pytest.fixture(scope="session")
def postgres_server():
    """One real PostgreSQL server for the session (see tests/support/postgres.py)."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server):
    """The URL of a new, empty database of its own on the session's server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_target(request, tmp_path):
    """Where a store keeps its records, once per database: ``db_target("ledger.db")``
    is that file in the test's folder, or one new PostgreSQL database (the same for
    every name in a test, as ``--database-url`` puts every store in one)."""
    if request.param == "sqlite":
        return lambda name: tmp_path / name
    url = request.getfixturevalue("postgres_url")
    return lambda name: url
