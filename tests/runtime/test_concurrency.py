"""Concurrent clients against the HTTP server: streams batched together all complete
correctly, a client that leaves (streaming or not) frees its slot without disturbing the
others, a full queue answers 503 with Retry-After, a crowd of 200 clients against a small
queue leaves the server healthy with nothing hung, and a generation past the server's deadline
ends with an error in the API's shape and frees its slot."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from corral_runtime.store.layout import ModelStore
from tests.runtime.conftest import RunningServer, serve, settings_for

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea:",
    "def fibonacci(n):",
    "Once upon a time in a land far away,",
]
GREEDY: dict[str, Any] = {"temperature": 0, "num_predict": 12}
# Counting on from a raw prompt keeps the base model going until its context is full: these
# requests end only when their client leaves.
ENDLESS: dict[str, Any] = {
    "model": MODEL,
    "prompt": "1, 2, 3, 4, 5,",
    "raw": True,
    "options": {"num_predict": -1, "temperature": 0},
}


@pytest.fixture(scope="module")
def batching_server(model_store: ModelStore) -> Iterator[RunningServer]:
    settings = settings_for(model_store.root, context_length=1024, parallel=4, max_queue=4)
    with serve(settings, model_store) as server:
        yield server


def gauge(base_url: str, name: str) -> float:
    text = httpx.get(base_url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{MODEL}"}} '):
            return float(line.split()[1])
    raise AssertionError(f"{name} for {MODEL} is not exported")


def wait_for_gauge(base_url: str, name: str, value: float, within: float = 10.0) -> None:
    """Until the gauge reads ``value``; a model still loading exports none yet."""
    deadline = time.monotonic() + within
    while True:
        try:
            if gauge(base_url, name) == value:
                return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        time.sleep(0.05)


async def generate(client: ollama.AsyncClient, prompt: str) -> tuple[str, Any]:
    text = ""
    final = None
    async for chunk in await client.generate(
        model=MODEL, prompt=prompt, options=GREEDY, raw=True, stream=True
    ):
        text += chunk.response or ""
        final = chunk
    return text, final


def test_concurrent_streams_all_complete_as_they_would_alone(
    batching_server: RunningServer,
) -> None:
    async def scenario() -> None:
        async with ollama.AsyncClient(host=batching_server.base_url) as client:
            alone = [await generate(client, p) for p in PROMPTS]
            together = await asyncio.gather(*(generate(client, p) for p in PROMPTS * 2))
        assert [t for t, _ in together] == [t for t, _ in alone] * 2
        for _, final in together:
            assert final.done and final.done_reason == "length" and final.eval_count == 12

    asyncio.run(scenario())
    assert gauge(batching_server.base_url, "corral_slots") == 4
    wait_for_gauge(batching_server.base_url, "corral_busy_slots", 0)
    # Each of the lone streams' 11 tokens after the first took a step of its own; every step
    # took one llama.cpp computation per run of consecutive sequence ids.
    steps = gauge(batching_server.base_url, "corral_decode_steps_total")
    computations = gauge(batching_server.base_url, "corral_decode_computations_total")
    assert steps >= 11 * len(PROMPTS)
    assert steps <= computations <= 4 * steps


def test_a_server_without_parallel_takes_its_slots_from_the_memory_budget(
    model_store: ModelStore,
) -> None:
    # The test model's f16 KV cache is 18 KiB a token, 18 MiB a slot at 1024 tokens: a quarter
    # of a 468 MiB budget holds six slots (its 241 MiB of weights and about 97 MiB of compute
    # graph leave more than that), where the context alone gave 8 (16384 tokens' worth).
    settings = settings_for(model_store.root, context_length=1024, memory_budget_bytes=468 << 20)
    assert settings.parallel is None
    prompts = [*PROMPTS, "List three uses of copper:", "The three primary colours are"]
    with serve(settings, model_store) as server:

        async def scenario() -> None:
            async with ollama.AsyncClient(host=server.base_url) as client:
                alone = [await generate(client, p) for p in prompts]
                together = await asyncio.gather(*(generate(client, p) for p in prompts))
            # Six streams in the six slots, each as it is alone (batch invariance holds).
            assert [t for t, _ in together] == [t for t, _ in alone]

        asyncio.run(scenario())
        assert gauge(server.base_url, "corral_slots") == 6


def test_a_leaving_stream_frees_its_slot_and_disturbs_nobody(
    batching_server: RunningServer,
) -> None:
    base = batching_server.base_url

    async def scenario() -> None:
        async with (
            ollama.AsyncClient(host=base) as client,
            httpx.AsyncClient(base_url=base, timeout=120) as http,
        ):
            alone = [await generate(client, p) for p in PROMPTS[1:]]
            async with http.stream("POST", "/api/generate", json=ENDLESS) as leaving:
                lines = leaving.aiter_lines()
                assert json.loads(await anext(lines))["done"] is False
                others = asyncio.gather(*(generate(client, p) for p in PROMPTS[1:]))
                await asyncio.sleep(0.3)
            # The endless stream's client has gone while the others were running.
            results = await others
        assert [t for t, _ in results] == [t for t, _ in alone]

    asyncio.run(scenario())
    wait_for_gauge(base, "corral_busy_slots", 0, within=5)
    assert gauge(base, "corral_pending_requests") == 0


def test_a_leaving_non_streaming_client_frees_its_slot(batching_server: RunningServer) -> None:
    base = batching_server.base_url
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/api/generate", json={**ENDLESS, "stream": False}, timeout=1.5)
    wait_for_gauge(base, "corral_busy_slots", 0, within=5)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            base + "/v1/completions",
            json={"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 5000, "temperature": 0},
            timeout=1.5,
        )
    wait_for_gauge(base, "corral_busy_slots", 0, within=5)


def test_a_full_queue_answers_503_with_retry_after(batching_server: RunningServer) -> None:
    base = batching_server.base_url

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120) as http:
            # Four slots and four places in the queue: eight endless requests fill both. A
            # queued request answers its status only once it holds a slot, so these are sent
            # without waiting for their answers.
            endless = [
                asyncio.create_task(
                    http.send(
                        http.build_request("POST", "/api/generate", json=ENDLESS), stream=True
                    )
                )
                for _ in range(8)
            ]
            try:
                await asyncio.to_thread(wait_for_gauge, base, "corral_queue_depth", 4)
                assert gauge(base, "corral_busy_slots") == 4
                busy = await http.post("/api/generate", json={**ENDLESS, "stream": False})
                assert busy.status_code == 503
                assert busy.json()["error"].startswith("server busy, please try again.")
                assert int(busy.headers["Retry-After"]) > 0
                chat = await http.post(
                    "/v1/chat/completions",
                    json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]},
                )
                assert chat.status_code == 503 and chat.headers["Retry-After"]
            finally:
                for task in endless:
                    if task.done():
                        await task.result().aclose()
                    else:
                        task.cancel()
                await asyncio.gather(*endless, return_exceptions=True)

    asyncio.run(scenario())
    wait_for_gauge(base, "corral_busy_slots", 0, within=10)
    wait_for_gauge(base, "corral_queue_depth", 0, within=10)


def test_two_hundred_clients_leave_the_server_healthy(model_store: ModelStore) -> None:
    settings = settings_for(model_store.root, context_length=512, parallel=2, max_queue=4)
    with serve(settings, model_store) as server:
        base = server.base_url
        httpx.post(base + "/api/generate", json={"model": MODEL, "prompt": ""}, timeout=60)

        async def one(http: httpx.AsyncClient, i: int) -> int | str:
            body = {
                "model": MODEL,
                "prompt": PROMPTS[i % len(PROMPTS)],
                "raw": True,
                "stream": i % 2 == 0,
                "options": {"temperature": 0, "num_predict": 4},
            }
            if i % 10 == 0:  # some clients give up early, mid-queue or mid-stream
                try:
                    await asyncio.wait_for(http.post("/api/generate", json=body), 0.3)
                except TimeoutError:
                    return "left"
            response = await http.post("/api/generate", json=body)
            if response.status_code == 503:
                assert response.headers["Retry-After"]
            else:
                assert response.status_code == 200
                assert json.loads(response.text.splitlines()[-1])["done"] is True
            return response.status_code

        async def crowd() -> list[int | str]:
            limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as http:
                return await asyncio.wait_for(
                    asyncio.gather(*(one(http, i) for i in range(200))), timeout=280
                )

        outcomes = asyncio.run(crowd())
        assert len(outcomes) == 200
        assert outcomes.count(200) >= 6  # at least the slots and the queue were served
        assert outcomes.count(503) > 0
        wait_for_gauge(base, "corral_busy_slots", 0, within=15)
        wait_for_gauge(base, "corral_queue_depth", 0, within=15)
        assert gauge(base, "corral_pending_requests") == 0
        assert httpx.get(base + "/healthz").status_code == 200
        after = httpx.post(
            base + "/api/generate",
            json={"model": MODEL, "prompt": PROMPTS[0], "stream": False, "options": GREEDY},
            timeout=60,
        )
        assert after.status_code == 200 and after.json()["eval_count"] == 12


def test_a_generation_past_its_deadline_ends_with_an_error_and_frees_its_slot(
    model_store: ModelStore,
) -> None:
    settings = settings_for(
        model_store.root, context_length=1024, parallel=1, generation_timeout_seconds=1.0
    )
    with serve(settings, model_store) as server:
        base = server.base_url
        with httpx.stream("POST", base + "/api/generate", json=ENDLESS, timeout=60) as response:
            assert response.status_code == 200
            lines = [json.loads(line) for line in response.iter_lines()]
        assert lines[0]["response"] and not lines[0]["done"]
        assert "time limit of 1 s" in lines[-1]["error"]
        wait_for_gauge(base, "corral_busy_slots", 0, within=5)
        body = {"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 2000, "temperature": 0}
        answer = httpx.post(base + "/v1/completions", json=body, timeout=60)
        assert answer.status_code == 500
        assert answer.json()["error"]["code"] == "generation_timeout"
