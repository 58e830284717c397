"""How the server behaves under load and over time: the decode thread never stalls the event
loop, a full queue answers 503, a client that leaves frees the model, least recently used models
are evicted, and the probes, metrics and API key work."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import GEMMA_PARAMS, GEMMA_TEMPLATE
from tests.runtime.conftest import RunningServer, serve, settings_for

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
# Counting on from a raw prompt keeps the base model going until the context is full (-1),
# far longer than any test waits: these requests end only when their client leaves.
LONG = {
    "model": MODEL,
    "prompt": "1, 2, 3, 4, 5,",
    "raw": True,
    "options": {"num_predict": -1, "temperature": 0},
}


@pytest.fixture(scope="module")
def small_queue_server(model_store: ModelStore) -> Iterator[RunningServer]:
    # One slot: one request generates, one waits, and a third finds the queue full.
    settings = settings_for(
        model_store.root, max_queue=1, api_key="sekret", context_length=16384, parallel=1
    )
    with serve(settings, model_store) as server:
        yield server


def auth(server: RunningServer) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, timeout=120, headers={"Authorization": "Bearer sekret"}
    )


def test_api_key_is_required_when_configured(small_queue_server: RunningServer) -> None:
    base = small_queue_server.base_url
    assert httpx.get(base + "/api/tags").status_code == 401
    assert httpx.get(base + "/v1/models", headers={"Authorization": "Bearer wrong"}).json()[
        "error"
    ]["type"] == ("authentication_error")
    assert httpx.get(base + "/healthz").status_code == 200  # probes stay open
    with auth(small_queue_server) as client:
        assert client.get("/api/tags").status_code == 200
    with ollama.Client(host=base, headers={"Authorization": "Bearer sekret"}) as official:
        assert any(m.model == MODEL for m in official.list().models)


def test_full_queue_answers_503_and_a_leaving_client_frees_the_model(
    small_queue_server: RunningServer,
) -> None:
    with auth(small_queue_server) as client:
        client.post("/api/generate", json={"model": MODEL, "prompt": ""})  # load first
        # One generating, one waiting: the queue (max_queue=1) is full.
        with client.stream("POST", "/api/generate", json=LONG) as first:
            lines = first.iter_lines()
            assert json.loads(next(lines))["done"] is False
            waiting: dict[str, int] = {}

            def wait_in_queue() -> None:
                response = client.post(
                    "/api/generate", json={**LONG, "stream": False, "options": {"num_predict": 2}}
                )
                waiting["status"] = response.status_code

            waiter = threading.Thread(target=wait_in_queue)
            waiter.start()
            deadline = time.monotonic() + 10
            while (
                f'corral_pending_requests{{model="{MODEL}"}} 2.0' not in client.get("/metrics").text
            ):
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.02)
            busy = client.post("/api/generate", json=LONG)
            assert busy.status_code == 503
            assert busy.json()["error"] == (
                "server busy, please try again.  maximum pending requests exceeded"
            )
            assert busy.headers["Retry-After"]
            openai_busy = client.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
            assert openai_busy.status_code == 503
            # Leaving the first stream early frees the model for the waiting request at once,
            # long before its context (16384 tokens) would have filled.
            left_at = time.monotonic()
        waiter.join(timeout=60)
        assert waiting["status"] == 200
        assert time.monotonic() - left_at < 5
        stats = client.post(
            "/api/generate", json={**LONG, "stream": False, "options": {"num_predict": 1}}
        )
        assert stats.status_code == 200


def test_decode_does_not_block_the_event_loop(runtime_server: RunningServer) -> None:
    with (
        httpx.Client(base_url=runtime_server.base_url, timeout=120) as client,
        client.stream("POST", "/api/generate", json=LONG) as stream,
    ):
        lines = stream.iter_lines()
        next(lines)
        # While tokens are being generated, other requests are answered promptly.
        for _ in range(5):
            started = time.monotonic()
            assert client.get("/healthz").status_code == 200
            assert client.get("/api/ps").status_code == 200
            assert time.monotonic() - started < 0.5


def test_health_ready_and_metrics(runtime_server: RunningServer) -> None:
    base = runtime_server.base_url
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    assert httpx.get(base + "/readyz").status_code == 200
    httpx.post(
        base + "/api/generate",
        json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}},
        timeout=60,
    )
    httpx.post(base + "/api/generate", json={"model": "missing:1b", "prompt": "Hi"})
    text = httpx.get(base + "/metrics").text
    assert 'corral_requests_total{endpoint="/api/generate",model="gemma3:270m",status="200"}' in (
        text
    )
    # A model this server does not have counts as unknown (clients choose these names).
    assert 'corral_requests_total{endpoint="/api/generate",model="unknown",status="404"}' in (text)
    for name in (
        "corral_time_to_first_token_seconds_bucket",
        "corral_time_per_output_token_seconds_bucket",
        "corral_tokens_generated_total",
        "corral_loaded_models",
        "corral_model_load_seconds_bucket",
        "corral_last_request_timestamp_seconds",
    ):
        assert name in text
    last = next(
        line
        for line in text.splitlines()
        if line.startswith("corral_last_request_timestamp_seconds ")
    )
    assert abs(float(last.split()[1]) - time.time()) < 60


def test_readyz_without_any_model(tmp_path: Path) -> None:
    empty = ModelStore(tmp_path)
    with serve(settings_for(tmp_path), empty) as server:
        assert httpx.get(server.base_url + "/readyz").status_code == 503
        assert httpx.get(server.base_url + "/healthz").status_code == 200


def test_least_recently_used_model_is_evicted(tmp_path: Path, test_model_path: Path) -> None:
    store = ModelStore(tmp_path)
    # Two loads of the one test model: names for the same weights and load options share one
    # load (tests/runtime/test_shared_load.py), so the second asks for another context.
    for name, num_ctx in (("first:1", 2048), ("second:1", 1024)):
        params = {**GEMMA_PARAMS, "num_ctx": num_ctx}
        store.create_model(name, test_model_path, template=GEMMA_TEMPLATE, params=params)
    with (
        serve(settings_for(tmp_path, max_loaded_models=1), store) as server,
        ollama.Client(host=server.base_url) as client,
    ):
        client.generate(model="first:1", prompt="Hi", options={"num_predict": 1})
        assert [m.model for m in client.ps().models] == ["first:1"]
        client.generate(model="second:1", prompt="Hi", options={"num_predict": 1})
        assert [m.model for m in client.ps().models] == ["second:1"]
    # A memory budget below two models' estimated size also keeps only one loaded.
    budget = settings_for(tmp_path, max_loaded_models=3, memory_budget_bytes=1024**3)
    with serve(budget, store) as server, ollama.Client(host=server.base_url) as client:
        client.generate(model="first:1", prompt="", keep_alive="1h")
        client.generate(model="second:1", prompt="", keep_alive="1h")
        assert [m.model for m in client.ps().models] == ["second:1"]
    with (
        serve(settings_for(tmp_path, max_loaded_models=2), store) as server,
        ollama.Client(host=server.base_url) as client,
    ):
        client.generate(model="first:1", prompt="", keep_alive="1h")
        client.generate(model="second:1", prompt="", keep_alive="1h")
        assert sorted(m.model for m in client.ps().models) == ["first:1", "second:1"]
        # A short keep_alive unloads the model when it runs out.
        client.generate(model="first:1", prompt="", keep_alive="300ms")
        deadline = time.monotonic() + 10
        while any(m.model == "first:1" for m in client.ps().models):
            assert time.monotonic() < deadline, "keep_alive did not expire"
            time.sleep(0.05)
        assert [m.model for m in client.ps().models] == ["second:1"]
