"""Two real models behind one server with a memory budget that holds one of them: requests
alternate between them on both APIs and all succeed, ``/api/ps`` shows one model at a time (the
other was evicted, not both loaded past the budget); a request for a model that is busy-blocked
waits for the busy one to finish and then takes its place; and a budget below either model
answers Ollama's "requires more system memory" error in each API's shape at once.

The estimates (from the real headers, n_ctx 2048 x 8 slots): gemma3:270m about 657 MB and
qwen2.5-coder:0.5b about 841 MB, so 1 GiB holds either, not both, and 600 MiB neither.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from corral_runtime.instructmodel import INSTRUCT_MODEL_NAME, ensure_instruct_model
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME, ensure_test_model
from tests.runtime.conftest import RunningServer, serve, settings_for

pytestmark = pytest.mark.runtime

GIB = 1 << 30
MIB = 1 << 20
FITS_ONE = GIB
FITS_NONE = 600 * MIB
SHORT = {"temperature": 0, "num_predict": 4}


@pytest.fixture(scope="module")
def both_models(
    tmp_path_factory: pytest.TempPathFactory, test_model_path: Path, instruct_model_path: Path
) -> ModelStore:
    """One store holding the Gemma test model and the Qwen instruct model."""
    store = ModelStore(tmp_path_factory.mktemp("two-models"))
    ensure_test_model(store)
    ensure_instruct_model(store)
    return store


@pytest.fixture(scope="module")
def fits_one(both_models: ModelStore) -> Iterator[RunningServer]:
    settings = settings_for(both_models.root, memory_budget_bytes=FITS_ONE)
    with serve(settings, both_models) as server:
        yield server


@pytest.fixture
def client(fits_one: RunningServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=fits_one.base_url) as client:
        yield client


def loaded(server: RunningServer) -> list[dict[str, object]]:
    answer = httpx.get(f"{server.base_url}/api/ps", timeout=30)
    answer.raise_for_status()
    models: list[dict[str, object]] = answer.json()["models"]
    return models


def test_alternating_requests_on_both_apis_all_succeed_one_model_loaded_at_a_time(
    fits_one: RunningServer, client: ollama.Client
) -> None:
    with openai.OpenAI(base_url=fits_one.openai_url, api_key="unused") as oai:
        alternate(fits_one, client, oai)
    # The Ollama client's own view agrees.
    assert [m.model for m in client.ps().models] == [INSTRUCT_MODEL_NAME]


def alternate(server: RunningServer, client: ollama.Client, oai: openai.OpenAI) -> None:
    """Gemma, Qwen, Gemma, Qwen: first through Ollama's API, then OpenAI's; after each
    request only the model just used is loaded."""
    for round_ in range(2):
        for name in (TEST_MODEL_NAME, INSTRUCT_MODEL_NAME):
            if round_ == 0:
                reply = client.generate(model=name, prompt="Say hi.", options=SHORT)
                assert reply.done and reply.response
            else:
                chat = oai.chat.completions.create(
                    model=name,
                    messages=[{"role": "user", "content": "Say hi."}],
                    max_tokens=4,
                    temperature=0,
                )
                assert chat.choices[0].message.content
            ps = loaded(server)
            assert [m["name"] for m in ps] == [name], ps
            size = ps[0]["size"]
            assert isinstance(size, int) and 0 < size <= FITS_ONE


def test_a_load_waits_for_the_busy_model_then_evicts_it(
    fits_one: RunningServer, client: ollama.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="corral_runtime.engine.manager")
    client.generate(model=TEST_MODEL_NAME, prompt="Hi", options=SHORT)  # Gemma loaded, idle
    started = threading.Event()
    gemma_done: list[float] = []

    def long_gemma() -> None:
        stream = client.generate(
            model=TEST_MODEL_NAME,
            prompt="Write a long story about a lighthouse.",
            options={"temperature": 0, "num_predict": 256},
            stream=True,
        )
        for chunk in stream:
            started.set()
            if chunk.done:
                gemma_done.append(time.monotonic())

    worker = threading.Thread(target=long_gemma)
    worker.start()
    assert started.wait(60)
    # Gemma is busy and Qwen cannot fit beside it: this request waits for Gemma's stream.
    reply = client.generate(model=INSTRUCT_MODEL_NAME, prompt="Say hi.", options=SHORT)
    qwen_done = time.monotonic()
    worker.join(60)
    assert reply.done and reply.response
    assert gemma_done and gemma_done[0] <= qwen_done  # the stream was never cut off
    assert f"waiting for a busy model to go idle to make room for {INSTRUCT_MODEL_NAME}" in (
        caplog.text
    )
    assert [m["name"] for m in loaded(fits_one)] == [INSTRUCT_MODEL_NAME]


def test_a_model_larger_than_the_budget_is_refused_at_once_in_each_api_shape(
    both_models: ModelStore,
) -> None:
    # Eight slots: with its default slots a model takes fewer where memory is short, and fits.
    settings = settings_for(both_models.root, memory_budget_bytes=FITS_NONE, parallel=8)
    with serve(settings, both_models) as server:
        for name in (TEST_MODEL_NAME, INSTRUCT_MODEL_NAME):
            answer = httpx.post(
                f"{server.base_url}/api/generate",
                json={"model": name, "prompt": "hi", "stream": False},
                timeout=60,
            )
            assert answer.status_code == 500
            message = answer.json()["error"]
            assert message.startswith("model requires more system memory (")
            assert "than is available (600.0 MiB)" in message
        with (
            openai.OpenAI(base_url=server.openai_url, api_key="unused", max_retries=0) as oai,
            pytest.raises(openai.InternalServerError) as refused,
        ):
            oai.chat.completions.create(
                model=INSTRUCT_MODEL_NAME, messages=[{"role": "user", "content": "hi"}]
            )
        body = refused.value.body
        assert isinstance(body, dict) and "requires more system memory" in body["message"]
        assert body["type"] == "api_error"
        assert loaded(server) == []
