"""Fixtures for the gateway tests: llama.cpp on the embedded Gemma 3 270M GGUF,
a real gateway on loopback, the official openai SDK as the client."""
from __future__ import annotations

import asyncio

import openai
import pytest

from runtime.pool import ModelStore
from runtime.pool.tokenizer import ModelTokenizer
from tests.support.gateway import GatewayThread, model

MODEL = "gemma3-270m"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """One model cache for the whole run, so the embedded GGUF is assembled once."""
    cache = tmp_path_factory.mktemp("models")
    asyncio.run(ModelStore(cache, show_progress=False).fetch(MODEL, "embedded"))
    return cache


@pytest.fixture(scope="session")
def tokenizer(model_cache) -> ModelTokenizer:
    path = asyncio.run(ModelStore(model_cache, show_progress=False).fetch(MODEL, "embedded")).path
    return ModelTokenizer(str(path))


@pytest.fixture
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
def gateway(model_cache):
    """A shared gateway serving the embedded model, for the API tests."""
    store = ModelStore(model_cache, show_progress=False)
    with GatewayThread([model(max_workers=1)], store) as gw:
        yield gw


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=120)
