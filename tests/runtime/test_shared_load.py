"""Names for the same weights share one load, as Ollama's runners are keyed by the model file.

Against the real Gemma test model: an ``/api/copy`` alias and a model created FROM the same
weights with its own template are served by the worker the first name loaded (one load in
``corral_model_load_seconds``, one worker object, memory counted once), each rendering its own
template; another num_ctx makes a second load; and keep_alive 0 through one name unloads that
name only, the others keep serving from the same worker. ``corral_loaded_models`` counts the
loads (what holds memory), ``corral_loaded_model_names`` the names on them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral_runtime.engine.manager import ModelManager
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME, ensure_test_model
from tests.runtime.conftest import RunningServer, serve, settings_for

pytestmark = pytest.mark.runtime

ALIAS = "alias:latest"
RAW = "raw:latest"  # the same weights with a template that is the prompt alone
SHORT: dict[str, Any] = {"temperature": 0, "num_predict": 2}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, test_model_path: Path
) -> Iterator[RunningServer]:
    store = ModelStore(tmp_path_factory.mktemp("shared-load"))
    ensure_test_model(store)
    # One slot: a load's memory does not depend on the budget the test sets later.
    with (
        serve(settings_for(store.root, parallel=1), store) as running,
        httpx.Client(base_url=running.base_url, timeout=60) as client,
    ):
        copied = client.post("/api/copy", json={"source": TEST_MODEL_NAME, "destination": ALIAS})
        assert copied.status_code == 200, copied.text
        made = client.post(
            "/api/create",
            json={"model": RAW, "from": TEST_MODEL_NAME, "template": "{{ .Prompt }}"},
        )
        assert made.status_code == 200, made.text
        yield running


def _counted(client: httpx.Client, series: str) -> float:
    """The sum of the server's metric samples whose line starts with ``series``."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in client.get("/metrics").text.splitlines()
        if line.startswith(series)
    )


def _loads(client: httpx.Client) -> float:
    """How many loads the server has made (``corral_model_load_seconds``' count, all models)."""
    return _counted(client, "corral_model_load_seconds_count")


def _loaded(client: httpx.Client) -> tuple[float, float]:
    """``corral_loaded_models`` (the loads in memory) and ``corral_loaded_model_names``."""
    return _counted(client, "corral_loaded_models "), _counted(client, "corral_loaded_model_names ")


def _chat(client: httpx.Client, model: str, **extra: Any) -> dict[str, Any]:
    answer = client.post(
        "/api/chat",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": False,
            "options": {**SHORT, **extra.pop("options", {})},
            **extra,
        },
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def _ps(client: httpx.Client) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in client.get("/api/ps").json()["models"]}


def test_names_for_the_same_weights_share_one_load(server: RunningServer) -> None:
    assert server.app is not None
    manager: ModelManager = server.app.state.models
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        first = _chat(client, TEST_MODEL_NAME)
        through_alias = _chat(client, ALIAS)
        through_raw = _chat(client, RAW)
        assert _loads(client) == 1
        assert _loaded(client) == (1, 3)  # one load in memory, three names on it
        workers = {m.name: m.worker for m in manager.loaded()}
        assert set(workers) == {TEST_MODEL_NAME, ALIAS, RAW}
        assert len({id(w) for w in workers.values()}) == 1
        # Each name renders its own template: Gemma's turns around the message, or none.
        assert through_alias["prompt_eval_count"] == first["prompt_eval_count"]
        assert through_raw["prompt_eval_count"] < first["prompt_eval_count"]

        # /api/ps lists every name, each with the size of the one load they share.
        ps = _ps(client)
        assert set(ps) == {TEST_MODEL_NAME, ALIAS, RAW}
        assert len({(m["size"], m["size_vram"], m["context_length"]) for m in ps.values()}) == 1

        # Memory is counted once: with room for two loads and a half, a second load (another
        # num_ctx, so another context) evicts nothing, where counting the shared one per name
        # would count three and evict. The budget is the manager's own, set here once its first
        # load is known (one slot each, so that load did not depend on it).
        size = ps[TEST_MODEL_NAME]["size"] - ps[TEST_MODEL_NAME]["size_vram"]
        manager.memory_budget = size * 2 + size // 2
        _chat(client, ALIAS, options={"num_ctx": 1024})
        assert _loads(client) == 2
        assert _loaded(client) == (2, 3)
        moved = {m.name: m.worker for m in manager.loaded()}
        assert moved[TEST_MODEL_NAME] is workers[TEST_MODEL_NAME] is moved[RAW]
        assert moved[ALIAS] is not workers[ALIAS]
        assert _ps(client)[ALIAS]["context_length"] == 1024

        # keep_alive 0 through one name of the shared load: that name goes, its worker stays.
        _chat(client, RAW, keep_alive=0)
        deadline = time.monotonic() + 30
        while RAW in _ps(client):
            assert time.monotonic() < deadline, "keep_alive 0 did not unload the name"
            time.sleep(0.05)
        assert set(_ps(client)) == {TEST_MODEL_NAME, ALIAS}
        assert _loaded(client) == (2, 2)
        kept = {m.name: m.worker for m in manager.loaded()}
        assert (
            kept[TEST_MODEL_NAME] is workers[TEST_MODEL_NAME] and not kept[TEST_MODEL_NAME].failed
        )
        assert _chat(client, TEST_MODEL_NAME)["eval_count"] > 0
        assert _loads(client) == 2


def test_a_shared_worker_that_fails_fails_every_name_and_both_come_back(
    server: RunningServer,
) -> None:
    assert server.app is not None
    manager: ModelManager = server.app.state.models
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        _chat(client, TEST_MODEL_NAME)
        _chat(client, RAW)
        shared = {m.name: m.worker for m in manager.loaded()}
        worker = shared[TEST_MODEL_NAME]
        assert shared[RAW] is worker
        others = {name: w for name, w in shared.items() if w is not worker}
        loads = _loads(client)

        worker.inject_fault(RuntimeError("injected"))
        deadline = time.monotonic() + 60
        while True:
            now = {m.name: m.worker for m in manager.loaded()}
            if now.get(TEST_MODEL_NAME) not in (None, worker) and not manager.unavailable():
                break
            assert time.monotonic() < deadline, "the shared load was not loaded again"
            time.sleep(0.05)

        # One reload brings back both names on one worker; a load on other weights or options
        # is untouched; each name on the failed worker counts the failure.
        assert now[RAW] is now[TEST_MODEL_NAME] and not now[RAW].failed
        assert {name: now[name] for name in others} == others
        assert _loads(client) == loads + 1
        for name in (TEST_MODEL_NAME, RAW):
            assert _counted(client, f'corral_engine_failures_total{{model="{name}"}}') == 1.0
        assert _chat(client, RAW)["eval_count"] > 0
        assert _chat(client, TEST_MODEL_NAME)["eval_count"] > 0
