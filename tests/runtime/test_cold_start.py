"""A cold ``corral serve``: its first ``/readyz`` 200 still means "can serve now" while
llama.cpp's bindings are imported in the background (``CORRAL_EARLY_ENGINE_IMPORT``, the
default) as when they are imported on first use: the request sent the moment it is ready loads
the model and is answered."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME
from devstack.controlplane import free_port
from tests.support.serveproc import (
    ServedProcess,
    running_process,
    serve_command,
    serving_process,
)

pytestmark = pytest.mark.runtime

READY_TIMEOUT_SECONDS = 60.0


def first_ready(client: httpx.Client) -> httpx.Response:
    """The first ``/readyz`` answer that is 200 (polled every 10 ms)."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        answer = client.get("/readyz")
        if answer.status_code == 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.01)


def name_three_colours(client: httpx.Client) -> httpx.Response:
    """A short greedy generate of the test model, not streamed."""
    return client.post(
        "/api/generate",
        json={
            "model": TEST_MODEL_NAME,
            "prompt": "Name three colours.",
            "stream": False,
            "options": {"temperature": 0, "num_predict": 4},
        },
    )


@contextmanager
def ready_server(
    store: ModelStore, log: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[ServedProcess, httpx.Client]]:
    """A one-slot ``corral serve`` (two threads) with ``args``, and a client, once the server
    first answers ``/readyz`` 200."""
    with (
        serving_process(
            store.root, "--threads", "2", "--parallel", "1", *args, log=log, env=env
        ) as server,
        httpx.Client(base_url=server.base_url, timeout=300) as client,
    ):
        ready = first_ready(client)
        assert ready.status_code == 200, server.log_tail()
        yield server, client


@pytest.mark.parametrize("early_import", ["true", "false"])
def test_the_request_sent_when_first_ready_is_served(
    model_store: ModelStore, tmp_path: Path, early_import: str
) -> None:
    log = tmp_path / "serve.log"
    env = {"CORRAL_EARLY_ENGINE_IMPORT": early_import}
    with ready_server(model_store, log, env=env) as (server, client):
        ready = client.get("/readyz")
        assert ready.json() == {"status": "ready", "models": []}
        answer = name_three_colours(client)
        assert answer.status_code == 200, server.log_tail()
        body = answer.json()
        assert body["response"]
        assert body["load_duration"] > 0  # this request loaded the model
        assert client.get("/readyz").json() == {"status": "ready", "models": [TEST_MODEL_NAME]}
        assert "Traceback" not in server.log.read_text(errors="replace")


def loaded_names(client: httpx.Client) -> list[str]:
    return [m["name"] for m in client.get("/api/ps").json()["models"]]


def test_a_preloaded_model_loads_before_any_request(
    model_store: ModelStore, tmp_path: Path
) -> None:
    # A missing name and a path out of the store first: each failure is logged and the next
    # name still loads.
    preload = f"nosuch:model,../../etc/passwd,{TEST_MODEL_NAME}"
    with ready_server(model_store, tmp_path / "serve.log", "--preload", preload) as (
        server,
        client,
    ):
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while TEST_MODEL_NAME not in loaded_names(client) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loaded_names(client) == [TEST_MODEL_NAME], server.log_tail()
        answer = client.post(
            "/api/generate",
            json={
                "model": TEST_MODEL_NAME,
                "prompt": "Hi",
                "stream": False,
                "options": {"num_predict": 2},
            },
        )
        assert answer.status_code == 200, answer.text
        # The request found the model loaded: no load of its own.
        assert answer.json()["load_duration"] < 50_000_000
        log = (tmp_path / "serve.log").read_text()
        assert "preloading nosuch:model failed" in log
        assert "preloading ../../etc/passwd failed" in log
        assert "preloaded " + TEST_MODEL_NAME in log


def test_a_request_during_the_preload_waits_for_it(model_store: ModelStore, tmp_path: Path) -> None:
    with ready_server(model_store, tmp_path / "serve.log", "--preload", TEST_MODEL_NAME) as (
        _,
        client,
    ):
        answer = name_three_colours(client)
        assert answer.status_code == 200, answer.text
        assert answer.json()["response"]
        # One load, shared: the request's and the preload's.
        assert (tmp_path / "serve.log").read_text().count(f"loaded {TEST_MODEL_NAME} (") == 1


# ``corral serve``'s own start, with uvicorn's part replaced: the replacement waits until the
# preloaded model is loaded, then names the web modules imported so far and stops the server.
ENGINE_FIRST = """
import asyncio, sys, time
from corral_runtime.commands import serve as command
from corral_runtime.settings import RuntimeSettings


class Loaded(Exception):
    pass


def web_server(settings, log_level, engine):
    deadline = time.monotonic() + 60
    while not engine.manager.loaded():
        if time.monotonic() > deadline:
            raise TimeoutError("the preload waited for the web stack")
        time.sleep(0.01)
    print(" ".join(m for m in ("fastapi", "starlette", "uvicorn") if m in sys.modules))
    raise Loaded


command.web_server = web_server
settings = RuntimeSettings(models=sys.argv[1], preload=[sys.argv[2]], threads=2, parallel=1)
try:
    asyncio.run(command.serve(settings, "info", engine_first=True))
except Loaded:
    print("loaded before the web stack")
"""


def test_the_preload_loads_the_model_before_the_web_stack_is_imported(
    model_store: ModelStore,
) -> None:
    # A cold pod's load overlaps the web stack's imports only if it needs none of them.
    result = subprocess.run(
        [sys.executable, "-c", ENGINE_FIRST, str(model_store.root), TEST_MODEL_NAME],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.splitlines() == ["", "loaded before the web stack"], result.stderr[-2000:]


# ``corral serve`` whose loads take two minutes, as a large model's can (the decode thread
# sleeps before it loads, without the GIL as llama.cpp's loader runs).
SLOW_LOADS = """
import sys, time
from corral_runtime.cli import main
from corral_runtime.engine.worker import ModelWorker

load = ModelWorker._load


def slow_load(self):
    time.sleep(120)
    load(self)


ModelWorker._load = slow_load
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_during_a_preload_exits_without_waiting_for_the_load(
    model_store: ModelStore, tmp_path: Path
) -> None:
    # A pod deleted while it loads goes at once, not at the end of its grace (SIGKILL).
    log, port = tmp_path / "serve.log", free_port()
    serve = serve_command(port, model_store.root, "--preload", TEST_MODEL_NAME)
    command = [sys.executable, "-c", SLOW_LOADS, *serve[serve.index("serve") :]]
    with running_process("corral serve", command, port, log, {}, 60) as server:
        server.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert server.process.wait(timeout=30) == 0, server.log_tail()
        assert time.monotonic() - started < 5, server.log_tail()
    assert "exiting without waiting for the load" in log.read_text()
