"""Requests that reach the engine cannot wedge a model, abort the process or leak internals.

Text that is no Unicode (a lone surrogate) is a 400 naming the field and the model keeps
answering; options llama.cpp asserts on are a 400 from a ``corral serve`` that stays up; a
keep_alive of any size leaves ``/api/ps`` answering; unknown roles are a 400; a decode thread
that dies fails every request it holds at once, ``/readyz`` says 503 until the model is loaded
again, the failure is counted, and the next request is served.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from corral_runtime.api.errors import as_api_error
from corral_runtime.engine.llama import ContextConfig, LlamaBatchContext
from corral_runtime.engine.manager import ModelManager
from corral_runtime.engine.types import (
    EngineError,
    EngineFailedError,
    GenerationRequest,
    SamplingParams,
)
from corral_runtime.engine.worker import GenerationStream, LoadConfig, ModelWorker
from corral_runtime.store.layout import ModelStore
from tests.runtime.conftest import RunningServer, serve, settings_for
from tests.support.serveproc import serving_process

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
SMALL = {"temperature": 0, "num_predict": 2}
LONE = "\ud800"
# Over a hundred tokens: more than llama.cpp's batch once it shrinks it to a tiny context.
LONG_PROMPT = "Tell me about the history of the city, its bridges, its rivers and its people. " * 4


@pytest.fixture
def http(runtime_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=runtime_server.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def client(runtime_server: RunningServer) -> Iterator[ollama.Client]:
    with ollama.Client(host=runtime_server.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def oai(runtime_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=runtime_server.openai_url, api_key="x", timeout=30) as oai:
        yield oai


def still_answers(client: httpx.Client) -> None:
    """The model serves a real request promptly (a wedged one would time the client out)."""
    response = client.post(
        "/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False, "options": SMALL}
    )
    assert response.status_code == 200 and response.json()["done"] is True


def post_raw(client: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    """POST a body as ASCII JSON, where a lone surrogate travels as its ``\\ud800`` escape (the
    official clients cannot send one: they encode their JSON as UTF-8 first)."""
    return client.post(path, content=json.dumps(body))


def no_path(text: str, *roots: Path) -> None:
    assert "/blobs/" not in text and "sha256-" not in text, text
    for root in roots:
        assert str(root) not in text, text


# -- text that is no Unicode -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/generate", {"prompt": f"Hi {LONE}"}, "prompt"),
        ("/api/generate", {"prompt": "Hi", "system": LONE}, "system"),
        ("/api/generate", {"prompt": "Hi", "suffix": LONE}, "suffix"),
        ("/api/generate", {"prompt": "Hi", "options": {"stop": [LONE]}}, "options.stop.0"),
        ("/api/chat", {"messages": [{"role": "user", "content": LONE}]}, "messages.0.content"),
        (
            "/api/chat",
            {
                "messages": [{"role": "user", "content": "Hi"}],
                "tools": [{"type": "function", "function": {"name": "f", "description": LONE}}],
            },
            "tools.0.function.description",
        ),
        ("/api/embed", {"input": ["ok", LONE]}, "input.1"),
        ("/api/embeddings", {"prompt": LONE}, "prompt"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONE}]}, "content"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "stop": [LONE]},
            "stop.0",
        ),
        ("/v1/completions", {"prompt": LONE}, "prompt"),
        ("/v1/embeddings", {"input": LONE}, "input"),
    ],
)
def test_lone_surrogates_are_a_400_naming_the_field(
    http: httpx.Client, path: str, body: dict[str, Any], field: str
) -> None:
    response = post_raw(http, path, {"model": MODEL, "stream": False, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    message = error["message"] if path.startswith("/v1") else error
    assert field in message and "not valid Unicode" in message
    if path.startswith("/v1"):
        assert error["param"] in body and error["param"] in message
    still_answers(http)


def test_a_lone_surrogate_in_a_created_template_is_a_400(http: httpx.Client) -> None:
    response = post_raw(
        http,
        "/api/create",
        {"model": "surrogate-test", "from": MODEL, "template": f"{LONE} {{{{ .Prompt }}}}"},
    )
    assert response.status_code == 400, response.text
    assert "template is not valid Unicode" in response.json()["error"]


def test_after_a_lone_surrogate_the_official_clients_are_served(
    http: httpx.Client, client: ollama.Client, oai: openai.OpenAI
) -> None:
    """Before, the surrogate killed the model's decode thread: every later request waited
    forever while /healthz and /readyz answered 200."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": LONE}], "stream": False}
    for path in ("/api/chat", "/v1/chat/completions"):
        assert post_raw(http, path, chat).status_code == 400
    assert client.generate(model=MODEL, prompt="Hi", options=SMALL).done
    reply = oai.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, temperature=0
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


# -- roles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["", "wizard", "System"])
def test_unknown_roles_are_a_400(
    http: httpx.Client, client: ollama.Client, oai: openai.OpenAI, role: str
) -> None:
    # The ollama client drops an empty role itself; the server must refuse it all the same.
    response = http.post(
        "/api/chat",
        json={"model": MODEL, "messages": [{"role": role, "content": "Hi"}], "options": SMALL},
    )
    assert response.status_code == 400 and "role" in response.json()["error"], response.text
    if role:
        with pytest.raises(ollama.ResponseError) as raised:
            client.chat(model=MODEL, messages=[{"role": role, "content": "Hi"}], options=SMALL)
        assert raised.value.status_code == 400 and "role" in raised.value.error
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": role, "content": "Hi"}],  # type: ignore[misc, list-item]
            max_tokens=2,
        )
    assert "role" in bad.value.message and bad.value.param == "messages"


def test_openai_developer_and_function_roles_are_read_as_system_and_tool(
    oai: openai.OpenAI,
) -> None:
    reply = oai.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": "Hi"},
            {"role": "function", "name": "lookup", "content": "42"},
        ],
        max_tokens=2,
        temperature=0,
    )
    assert reply.choices[0].finish_reason in ("stop", "length")


def test_a_prompt_far_past_the_context_is_refused_without_tokenizing_it(
    http: httpx.Client,
) -> None:
    """Tokenizing runs on the model's decode thread: ten megabytes of prompt held every other
    sequence of the model for seconds before it was refused as too long."""
    response = http.post(
        "/api/generate",
        json={"model": MODEL, "prompt": "word " * 2_000_000, "options": SMALL},
    )
    assert response.status_code == 400, response.text
    assert "(over 2048 tokens) exceeds the context length (2048 tokens)" in response.json()["error"]
    still_answers(http)


def test_a_generation_without_num_predict_stops_at_the_context(model_store: ModelStore) -> None:
    with serve(settings_for(model_store.root, context_length=256), model_store) as server:
        response = httpx.post(
            f"{server.base_url}/api/generate",
            json={
                "model": MODEL,
                "prompt": "Count from one to one thousand: one, two,",
                "stream": False,
                "options": {"num_predict": -1, "num_ctx": 256, "temperature": 0},
            },
            timeout=120,
        )
    body = response.json()
    assert response.status_code == 200, body
    assert body["prompt_eval_count"] + body["eval_count"] <= 256


# -- options llama.cpp asserts on --------------------------------------------------------------


# Each made llama.cpp assert (taking the process down), allocate without bound, or misbehave:
# num_ctx 1 (eight slots) and 8 (one slot) shrank llama.cpp's batch below one prompt chunk; a
# hundred thousand stop strings slowed every sequence on the model's decode thread.
BAD_OPTIONS = [
    ({"num_ctx": 1}, "num_ctx"),
    ({"num_ctx": 8}, "num_ctx"),
    ({"num_ctx": 1_000_000_000}, "num_ctx"),
    ({"num_thread": 100_000}, "num_thread"),
    ({"top_k": 2**40}, "top_k"),
    ({"num_predict": 2**40}, "num_predict"),
    ({"repeat_last_n": 2**40, "repeat_penalty": 1.1}, "repeat_last_n"),
    ({"num_batch": 0}, "num_batch"),
    ({"num_gpu": -5}, "num_gpu"),
    ({"seed": 2**70}, "seed"),
    ({"stop": [f"stop {i}" for i in range(100_000)]}, "stop"),
]


def test_options_llama_cpp_asserts_on_are_a_400_and_the_process_stays_up(
    model_store: ModelStore, tmp_path: Path
) -> None:
    with (
        serving_process(
            model_store.root, "--threads", "2", "--parallel", "1", log=tmp_path / "serve.log"
        ) as server,
        httpx.Client(base_url=server.base_url, timeout=120) as client,
    ):
        for options, key in BAD_OPTIONS:
            response = client.post(
                "/api/generate",
                json={
                    "model": MODEL,
                    "prompt": LONG_PROMPT,
                    "stream": False,
                    "options": {**SMALL, **options},
                },
            )
            assert response.status_code == 400, (options, response.text, server.log_tail())
            assert key in response.json()["error"]
            no_path(response.text, model_store.root)
            assert server.alive(), server.log_tail()
        # Python's json (and so the server) reads these literals; they must not reach llama.cpp.
        for literal in ("NaN", "Infinity", "-Infinity"):
            body = f'{{"model": "{MODEL}", "prompt": "Hi", "options": {{"top_p": {literal}}}}}'
            response = client.post("/api/generate", content=body)
            assert response.status_code == 400, response.text
            assert "top_p" in response.json()["error"]
        response = client.post(
            "/api/generate",
            json={"model": MODEL, "prompt": LONG_PROMPT, "stream": False, "options": SMALL},
        )
        assert response.status_code == 200, server.log_tail()
        assert server.alive()


def test_openai_parameters_out_of_bounds_name_the_parameter(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2**40
        )
    assert bad.value.param == "max_tokens" and "max_tokens" in bad.value.message


# -- keep_alive --------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [1e308, "999999999h", -1e308, 10**30])
def test_any_keep_alive_leaves_ps_answering(
    http: httpx.Client, client: ollama.Client, keep_alive: float | str
) -> None:
    assert client.generate(model=MODEL, prompt="Hi", options=SMALL, keep_alive=keep_alive).done
    listed = client.ps()
    entry = next(m for m in listed.models if m.model == MODEL)
    assert entry.expires_at is not None
    assert entry.expires_at.year > datetime.datetime.now(datetime.UTC).year + 50
    assert http.get("/api/ps").status_code == 200
    # Back to the server's default, for the tests that follow.
    assert client.generate(model=MODEL, prompt="Hi", options=SMALL, keep_alive="5m").done
    assert http.get("/api/ps").status_code == 200


def test_numbers_past_any_float_are_answered_not_500(http: httpx.Client) -> None:
    """JSON integers have no limit: 10**400 made float() overflow into a bare 500."""
    huge = "1" + "0" * 400
    body = (
        f'{{"model": "{MODEL}", "prompt": "Hi", "stream": false, '
        f'"options": {{"temperature": {huge}}}}}'
    )
    response = http.post("/api/generate", content=body)
    assert response.status_code == 400 and "temperature" in response.json()["error"]
    body = (
        f'{{"model": "{MODEL}", "prompt": "Hi", "stream": false, "keep_alive": {huge}, '
        '"options": {"temperature": 0, "num_predict": 2}}'
    )
    assert http.post("/api/generate", content=body).status_code == 200
    assert http.get("/api/ps").status_code == 200
    http.post("/api/generate", json={"model": MODEL, "keep_alive": "5m"})


def test_keep_alive_infinity_is_forever_and_nan_is_a_400(http: httpx.Client) -> None:
    for literal, status in (("Infinity", 200), ("-Infinity", 200), ("NaN", 400)):
        body = (
            f'{{"model": "{MODEL}", "prompt": "Hi", "stream": false, "keep_alive": {literal}, '
            '"options": {"temperature": 0, "num_predict": 2}}'
        )
        assert http.post("/api/generate", content=body).status_code == status
        assert http.get("/api/ps").status_code == 200
    http.post("/api/generate", json={"model": MODEL, "keep_alive": "5m"})


# -- 500s name no files ------------------------------------------------------------------------


def test_a_model_llama_cpp_cannot_load_is_an_error_without_its_path(tmp_path: Path) -> None:
    bogus = tmp_path / "secret-dir" / "model.gguf"
    bogus.parent.mkdir()
    bogus.write_bytes(b"not a model at all" * 100)
    with pytest.raises(EngineError) as raised:
        LlamaBatchContext(ContextConfig(model_path=bogus, n_ctx=256, parallel=1, n_batch=64))
    assert str(bogus) in (raised.value.detail or "")
    answer = as_api_error(raised.value)
    assert answer.status == 500 and "secret-dir" not in answer.message
    assert str(tmp_path) not in answer.message


# -- a decode thread that dies -----------------------------------------------------------------


def _metric(text: str, name: str, model: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_dead_decode_thread_fails_its_requests_and_the_model_is_reloaded(
    model_store: ModelStore,
) -> None:
    settings = settings_for(model_store.root, parallel=1)
    with (
        serve(settings, model_store) as server,
        httpx.Client(base_url=server.base_url, timeout=60) as client,
    ):
        assert server.app is not None
        manager: ModelManager = server.app.state.models
        still_answers(client)
        (model,) = manager.loaded()
        worker = model.worker

        # One request holds the only slot, streaming; two more wait behind it.
        first_line = threading.Event()
        streamed: list[str] = []

        def stream() -> None:
            with client.stream(
                "POST",
                "/api/generate",
                json={
                    "model": MODEL,
                    "prompt": "Write a long story about a dragon.",
                    "options": {"temperature": 0, "num_predict": 1000},
                },
            ) as response:
                for line in response.iter_lines():
                    streamed.append(line)
                    first_line.set()

        def waiting_ollama() -> httpx.Response:
            return client.post(
                "/api/generate",
                json={"model": MODEL, "prompt": "Hi", "stream": False, "options": SMALL},
            )

        def waiting_openai() -> Exception | None:
            with openai.OpenAI(
                base_url=server.openai_url, api_key="x", timeout=60, max_retries=0
            ) as oai:
                try:
                    oai.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
                except openai.APIStatusError as exc:
                    return exc
            return None

        statuses: list[int] = []
        polling = threading.Event()

        def poll_ready() -> None:
            with httpx.Client(base_url=server.base_url, timeout=10) as probe:
                while not polling.is_set():
                    statuses.append(probe.get("/readyz").status_code)
                    time.sleep(0.01)

        with ThreadPoolExecutor(4) as pool:
            streaming = pool.submit(stream)
            assert first_line.wait(60)
            queued = [pool.submit(waiting_ollama), pool.submit(waiting_openai)]
            deadline = time.monotonic() + 30
            while worker.queued < 2:
                assert time.monotonic() < deadline, "the two requests never queued"
                time.sleep(0.01)
            poller = pool.submit(poll_ready)

            failed_at = time.monotonic()
            worker.inject_fault(RuntimeError("injected"))

            streaming.result(timeout=30)
            plain = queued[0].result(timeout=30)
            oai_error = queued[1].result(timeout=30)
            assert time.monotonic() - failed_at < 30
            # The stream ends with an error line, the waiting ones with a 500 in their shape.
            assert '"error"' in streamed[-1] and "failed" in streamed[-1], streamed[-3:]
            assert plain.status_code == 500 and "failed" in plain.json()["error"]
            assert isinstance(oai_error, openai.InternalServerError), oai_error
            for text in (streamed[-1], plain.text, str(oai_error)):
                no_path(text, model_store.root)

            deadline = time.monotonic() + 60
            while not (manager.loaded() and not manager.unavailable()):
                assert time.monotonic() < deadline, "the model was not loaded again"
                time.sleep(0.05)
            time.sleep(0.1)
            polling.set()
            poller.result(timeout=30)
        assert 503 in statuses, statuses
        assert statuses[-1] == 200, statuses[-5:]
        (reloaded,) = manager.loaded()
        assert reloaded.worker is not worker and not reloaded.worker.failed
        metrics = client.get("/metrics").text
        assert _metric(metrics, "corral_engine_failures_total", MODEL) == 1.0
        still_answers(client)
        assert client.get("/readyz").status_code == 200


async def test_a_worker_whose_thread_died_refuses_at_once_and_tells_its_owner(
    test_model_path: Path,
) -> None:
    told = asyncio.Event()
    config = LoadConfig(model_path=test_model_path, n_ctx=256, n_threads=2, parallel=1)
    worker = ModelWorker(MODEL, config, max_pending=4, on_failure=lambda _w: told.set())
    await worker.start()
    try:
        running = worker.generate(
            GenerationRequest(prompt="Once upon a time", params=SamplingParams(num_predict=200))
        )
        await running.started()
        waiting = worker.generate(GenerationRequest(prompt="Hi"))
        worker.inject_fault(RuntimeError("injected"))
        await asyncio.wait_for(told.wait(), 30)
        assert worker.failed and worker.pending == 0
        with pytest.raises(EngineFailedError):
            await asyncio.wait_for(_drain(running), 30)
        with pytest.raises(EngineFailedError):
            await asyncio.wait_for(waiting.started(), 30)
        with pytest.raises(EngineFailedError):
            worker.generate(GenerationRequest(prompt="Hi"))
        with pytest.raises(EngineFailedError):
            await asyncio.wait_for(worker.embed(["Hi"], truncate=True), 30)
        assert worker.pending == 0
    finally:
        await asyncio.wait_for(worker.close(), 30)


async def _drain(stream: GenerationStream) -> None:
    async for _piece in stream:
        pass
