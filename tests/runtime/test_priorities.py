"""Request priorities on the real server and test model: with every slot held by batch work and
more batch requests queued, an interactive request takes the next free slot ahead of them,
``/metrics`` shows the wait queue and the wait per class, and an unknown class is a 400 on both
APIs; on the engine, an interactive request that arrives during a batch decode stops it and has
its prompt evaluated first, every output still its lone one."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral_runtime.engine.llama import Row
from corral_runtime.engine.priority import PriorityPolicy
from corral_runtime.engine.types import GenerationRequest, SamplingParams
from corral_runtime.engine.worker import GenerationStream, LoadConfig, ModelWorker
from corral_runtime.settings import RuntimeSettings
from corral_runtime.store.layout import ModelStore
from tests.runtime.conftest import RunningServer, serve, settings_for

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
# Counting on from a raw prompt keeps the base model going until its client leaves.
ENDLESS: dict[str, Any] = {
    "model": MODEL,
    "prompt": "1, 2, 3, 4, 5,",
    "raw": True,
    "options": {"num_predict": -1, "temperature": 0},
}
SHORT: dict[str, Any] = {
    "model": MODEL,
    "prompt": "The capital of France is",
    "raw": True,
    "options": {"num_predict": 8, "temperature": 0},
}


@pytest.fixture(scope="module")
def two_slot_server(model_store: ModelStore) -> Iterator[RunningServer]:
    settings = settings_for(model_store.root, context_length=1024, parallel=2, max_queue=8)
    with serve(settings, model_store) as server:
        yield server


def metric(text: str, name: str, **labels: str) -> float | None:
    """A sample's value in a Prometheus text page (labels in the order given), or None."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    prefix = f"{name}{{{wanted}}} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return None


async def wait_for(client: httpx.AsyncClient, name: str, value: float, **labels: str) -> str:
    """Poll /metrics until the sample reaches ``value``; the page it was read from."""
    deadline = time.monotonic() + 30
    while True:
        page = (await client.get("/metrics")).text
        if metric(page, name, **labels) == value:
            return page
        assert time.monotonic() < deadline, f"{name}{labels} never reached {value}"
        await asyncio.sleep(0.05)


async def stream(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    events: list[str],
    name: str,
    priority: str | None,
    streaming: asyncio.Event | None = None,
) -> None:
    """Generate with ``body`` under ``priority``, logging ``name`` at its first piece (and
    setting ``streaming``) and at its end."""
    headers = {} if priority is None else {"X-Corral-Priority": priority}
    async with client.stream("POST", "/api/generate", json=body, headers=headers) as response:
        assert response.status_code == 200
        first = True
        async for line in response.aiter_lines():
            chunk = json.loads(line)
            if first:
                events.append(f"{name} first")
                first = False
                if streaming is not None:
                    streaming.set()
            if chunk.get("done"):
                events.append(f"{name} done")


async def two_batch_hogs(client: httpx.AsyncClient, events: list[str]) -> list[asyncio.Task[None]]:
    """Two endless batch streams (``hog0``, ``hog1``), once both hold a slot and stream, so
    nothing sent after them can overtake them."""
    streaming = [asyncio.Event(), asyncio.Event()]
    hogs = [
        asyncio.create_task(stream(client, ENDLESS, events, f"hog{i}", "batch", streaming[i]))
        for i in range(2)
    ]
    await wait_for(client, "corral_busy_slots", 2, model=MODEL)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in streaming)), 60)
    return hogs


def test_an_interactive_request_takes_the_next_slot_ahead_of_queued_batch_ones(
    two_slot_server: RunningServer,
) -> None:
    events: list[str] = []
    labels = {"model": MODEL}

    async def scenario() -> str:
        async with httpx.AsyncClient(base_url=two_slot_server.base_url, timeout=120) as client:
            hogs = await two_batch_hogs(client, events)
            queued = []
            for i in range(3):
                queued.append(
                    asyncio.create_task(stream(client, SHORT, events, f"batch{i}", "batch"))
                )
                await wait_for(
                    client, "corral_queue_depth_by_priority", i + 1, **labels, priority="batch"
                )
            # No header: interactive, the default class.
            interactive = asyncio.create_task(stream(client, SHORT, events, "interactive", None))
            waiting = await wait_for(
                client, "corral_queue_depth_by_priority", 1, **labels, priority="interactive"
            )
            assert (
                metric(waiting, "corral_queue_depth_by_priority", **labels, priority="batch") == 3
            )
            hogs[0].cancel()  # its slot frees at the next step
            await interactive
            await asyncio.gather(*queued)
            hogs[1].cancel()
            await asyncio.gather(*hogs, return_exceptions=True)
            await wait_for(client, "corral_busy_slots", 0, **labels)
            return (await client.get("/metrics")).text

    page = asyncio.run(scenario())
    firsts = [event.split()[0] for event in events if event.endswith(" first")]
    assert firsts[:2] == ["hog0", "hog1"] or firsts[:2] == ["hog1", "hog0"]
    assert firsts[2:] == ["interactive", "batch0", "batch1", "batch2"], events
    # The queued batch requests went in arrival order, one after another.
    assert events.index("interactive done") < events.index("batch0 first")
    for priority, count in (("interactive", 1), ("batch", 5)):
        served = metric(page, "corral_queue_wait_seconds_count", **labels, priority=priority)
        assert served is not None and served >= count, (priority, served)
        depth = metric(page, "corral_queue_depth_by_priority", **labels, priority=priority)
        assert depth == 0
    interactive_wait = metric(
        page, "corral_queue_wait_seconds_sum", **labels, priority="interactive"
    )
    batch_wait = metric(page, "corral_queue_wait_seconds_sum", **labels, priority="batch")
    assert interactive_wait is not None and batch_wait is not None
    assert batch_wait > interactive_wait


def two_shared_one_reserved(model_store: ModelStore, **overrides: object) -> RuntimeSettings:
    """A server's settings with two shared slots and one reserved for interactive requests."""
    return settings_for(
        model_store.root,
        context_length=1024,
        parallel=2,
        max_queue=8,
        priority_reserved_slots=1,
        **overrides,
    )


def test_a_reserved_slot_comes_on_top_of_the_shared_ones_and_batch_still_ages_past(
    model_store: ModelStore,
) -> None:
    """Two shared slots and one reserved: batch work holds both shared slots (a third batch
    request waits though the reserved slot is free) and an interactive request takes the
    reserved one at once, answering while both batch streams go on. Then, with every slot held,
    the waiting batch request has aged past a fresh interactive one and takes the next slot
    that frees before it."""
    settings = two_shared_one_reserved(model_store, priority_aging_seconds=1.0)
    events: list[str] = []
    labels = {"model": MODEL}

    async def scenario(base_url: str) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            hogs = await two_batch_hogs(client, events)
            queued_at = time.monotonic()
            queued = asyncio.create_task(stream(client, SHORT, events, "batch", "batch"))
            page = await wait_for(
                client, "corral_queue_depth_by_priority", 1, **labels, priority="batch"
            )
            assert metric(page, "corral_busy_slots", **labels) == 2
            assert metric(page, "corral_slots", **labels) == 3  # the reserved one counted
            await stream(client, SHORT, events, "interactive", None)
            assert "batch first" not in events  # still waiting for a shared slot
            assert not any(e.startswith("hog") and e.endswith("done") for e in events)
            # Every slot held (the reserved one by an interactive stream), the batch request
            # waits on past several aging periods; then a fresh interactive request arrives.
            held = asyncio.create_task(stream(client, ENDLESS, events, "held", None))
            await wait_for(client, "corral_busy_slots", 3, **labels)
            await asyncio.sleep(max(0.0, queued_at + 4 * 1.0 - time.monotonic()))
            late = asyncio.create_task(stream(client, SHORT, events, "late", None))
            await wait_for(
                client, "corral_queue_depth_by_priority", 1, **labels, priority="interactive"
            )
            hogs[0].cancel()  # one shared slot frees: the aged batch request takes it
            await queued
            held.cancel()
            await late
            hogs[1].cancel()
            await asyncio.gather(*hogs, held, return_exceptions=True)

    with serve(settings, model_store) as server:
        asyncio.run(scenario(server.base_url))
    assert events.index("interactive done") < events.index("batch first")
    assert events.index("batch first") < events.index("late first"), events


@pytest.mark.parametrize("path", ["/api/generate", "/v1/completions"])
def test_an_unknown_class_is_refused(two_slot_server: RunningServer, path: str) -> None:
    body = {"model": MODEL, "prompt": "Hi", "stream": False}
    response = httpx.post(
        two_slot_server.base_url + path,
        json=body,
        headers={"X-Corral-Priority": "urgent"},
        timeout=60,
    )
    assert response.status_code == 400
    assert "interactive, batch" in response.text


def test_a_batch_request_alone_is_served_at_once(two_slot_server: RunningServer) -> None:
    response = httpx.post(
        two_slot_server.base_url + "/api/generate",
        json={**SHORT, "stream": False},
        headers={"X-Corral-Priority": "batch"},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["eval_count"] == 8


async def timed_pieces(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    priority: str | None,
    streaming: asyncio.Event | None = None,
) -> tuple[str, list[float]]:
    """Generate with ``body`` under ``priority`` (setting ``streaming`` at the first piece):
    the text, and when each piece arrived."""
    headers = {} if priority is None else {"X-Corral-Priority": priority}
    text, times = "", []
    async with client.stream("POST", "/api/generate", json=body, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            piece = json.loads(line).get("response")
            if piece:
                text += piece
                times.append(time.monotonic())
                if streaming is not None:
                    streaming.set()
    return text, times


def test_a_reserved_slots_row_takes_a_batch_rows_turn_and_batch_output_stays_its_own(
    model_store: ModelStore,
) -> None:
    """Two shared slots and one reserved, both shared ones decoding batch work: while an
    interactive request decodes in the reserved slot, a step decodes two rows, not three (a
    batch row gives its turn, ``priority.paused_rows``), so the batch streams get about one
    token per interactive token between them where they got two before; and each batch
    request's text is still the one it gets alone."""
    settings = two_shared_one_reserved(model_store)
    batch = [
        {**ENDLESS, "prompt": prompt, "options": {"num_predict": 96, "temperature": 0}}
        for prompt in ("1, 2, 3, 4, 5,", "10, 11, 12, 13,")
    ]
    interactive = {**ENDLESS, "options": {"num_predict": 32, "temperature": 0}}

    async def scenario(base_url: str) -> tuple[list[str], list[str], int, int]:
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            alone = [(await timed_pieces(client, body, "batch"))[0] for body in batch]
            streaming = [asyncio.Event() for _ in batch]
            running = [
                asyncio.create_task(timed_pieces(client, body, "batch", started))
                for body, started in zip(batch, streaming, strict=True)
            ]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in streaming)), 60)
            _, times = await timed_pieces(client, interactive, None)
            together = await asyncio.gather(*running)
        # Batch tokens that arrived while the interactive one decoded (after its first).
        beside = sum(1 for _, arrived in together for t in arrived if times[0] < t <= times[-1])
        return alone, [text for text, _ in together], beside, len(times) - 1

    with serve(settings, model_store) as server:
        alone, together, beside, interactive_tokens = asyncio.run(scenario(server.base_url))
    assert together == alone
    assert interactive_tokens >= 24
    # Three rows a step gave batch 2 tokens per interactive one; two rows give it 1 (1.25
    # with the full step after a row's longest pause, ``priority.MAX_PAUSED_STEPS``).
    assert beside <= 1.5 * interactive_tokens, (beside, interactive_tokens)


async def text_of(stream: GenerationStream, streaming: asyncio.Event | None = None) -> str:
    """A generation's whole text (setting ``streaming`` at its first piece)."""
    await stream.started()
    text = ""
    async for piece in stream:
        text += piece
        if streaming is not None:
            streaming.set()
    return text


async def test_an_interactive_request_stops_the_batch_decode_in_flight(
    test_model_path: Path,
) -> None:
    """Two batch generations decode in the shared slots; an interactive request arrives while
    their step's ``llama_decode`` runs (sent from inside it, so it is in flight for sure). That
    decode stops, the interactive prompt is evaluated next, and the batch rows are decoded
    again after it: the request waits for no batch decode. Every text is the one its request
    gets alone (the stopped rows left nothing in the KV memory)."""
    config = LoadConfig(
        model_path=test_model_path,
        n_ctx=512,
        n_threads=2,
        parallel=2,
        priority=PriorityPolicy(reserved=1),
    )
    greedy = SamplingParams(temperature=0, num_predict=24)
    batch = [
        GenerationRequest(prompt=text, params=greedy, priority="batch")
        for text in ("1, 2, 3, 4, 5,", "Once upon a time in a land far away,")
    ]
    interactive = GenerationRequest(prompt="The capital of France is", params=greedy)
    model = ModelWorker("gemma3:270m", config, max_pending=8)
    await model.start()
    try:
        alone = [await text_of(model.generate(r)) for r in (*batch, interactive)]
        loop = asyncio.get_running_loop()
        context = model._require_context()
        real_decode = context.decode
        calls: list[tuple[frozenset[int], int, bool]] = []  # sequences, rows, completed
        sent, sent_here = threading.Event(), asyncio.Event()  # on the decode thread, here
        asked: list[GenerationStream] = []

        def send() -> None:
            asked.append(model.generate(interactive))
            sent.set()
            sent_here.set()

        def decode(rows: list[Row]) -> bool:
            """The real decode; the first two-row step after the batch streams have started
            first sends the interactive request, and goes on once it is sent."""
            if streaming_now() and not asked and len(rows) == 2:
                loop.call_soon_threadsafe(send)
                assert sent.wait(30)
            done = real_decode(rows)
            calls.append((frozenset(row.seq_id for row in rows), len(rows), done))
            return done

        streaming = [asyncio.Event() for _ in batch]

        def streaming_now() -> bool:
            return all(event.is_set() for event in streaming)

        context.decode = decode  # type: ignore[method-assign]
        running = [
            asyncio.create_task(text_of(model.generate(r), event))
            for r, event in zip(batch, streaming, strict=True)
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in streaming)), 60)
        await asyncio.wait_for(sent_here.wait(), 60)
        answer = await text_of(asked[0])
        together = await asyncio.gather(*running)
    finally:
        await model.close()
    assert [*together, answer] == alone
    stops = [i for i, (*_, done) in enumerate(calls) if done is False]
    assert len(stops) == 1, calls  # the decode in flight, and no other
    stopped = stops[0]
    batch_rows, n_rows, _ = calls[stopped]
    assert n_rows == 2
    # Next: the interactive prompt, alone (a sequence not in the batch), then the batch rows.
    prompt_rows, n_prompt, prompt_done = calls[stopped + 1]
    assert prompt_done and len(prompt_rows) == 1 and not prompt_rows & batch_rows
    assert n_prompt > 1
    assert calls[stopped + 2] == (batch_rows, 2, True)
