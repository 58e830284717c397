"""Fixtures for the runtime tier: real uvicorn servers on loopback serving the real test model.

``runtime_server`` (session) is the shared server over the seeded ``model_store``; tests that
need other settings (a tiny queue, a body limit, an API key, their own store) start their own
with ``serve(settings, store)``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ollama
import pytest
import uvicorn
from fastapi import FastAPI

from corral_runtime.app import create_app
from corral_runtime.settings import RuntimeSettings
from corral_runtime.store.layout import ModelStore
from corral_runtime.store.pull import Puller, PullOptions
from tests.support.gguf_corpus import encode, tiny_model
from tests.support.registry import TestRegistry, running_registry

# Small contexts and short answers keep the tier quick on two cores.
TEST_NUM_CTX = 2048
TINY_MODEL = encode(tiny_model())


@dataclass(frozen=True, slots=True)
class RunningServer:
    base_url: str
    store: ModelStore
    settings: RuntimeSettings
    app: FastAPI | None = None  # the in-process app (its state: the manager, the metrics)

    @property
    def openai_url(self) -> str:
        return f"{self.base_url}/v1"


def settings_for(store_root: Path, **overrides: object) -> RuntimeSettings:
    values: dict[str, object] = {
        "models": store_root,
        "context_length": TEST_NUM_CTX,
        "threads": 2,
        **overrides,
    }
    return RuntimeSettings.model_validate(values)


@contextmanager
def serve(settings: RuntimeSettings, store: ModelStore) -> Iterator[RunningServer]:
    """Run ``create_app(settings)`` under uvicorn on 127.0.0.1 (a free port) until exit."""
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the runtime server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(
            base_url=f"http://127.0.0.1:{port}", store=store, settings=settings, app=app
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def runtime_server(model_store: ModelStore) -> Iterator[RunningServer]:
    """The runtime serving the seeded store (``gemma3:270m``), shared by the session."""
    with serve(settings_for(model_store.root), model_store) as server:
        yield server


@pytest.fixture
def store_server(store: ModelStore) -> Iterator[RunningServer]:
    """The runtime serving the requesting test module's own ``store`` fixture."""
    with serve(settings_for(store.root), store) as server:
        yield server


@pytest.fixture
def store_client(store_server: RunningServer) -> Iterator[ollama.Client]:
    """The official ollama client of ``store_server``."""
    with ollama.Client(host=store_server.base_url) as client:
        yield client


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    """A loopback registry publishing the tiny llama model (``gguf_corpus``) as ``library/tiny``."""
    with running_registry(tmp_path_factory.mktemp("registry")) as registry:
        registry.add_model("library", "tiny", "latest", TINY_MODEL, template="{{ .Prompt }}")
        yield registry


def pull_tiny(store: ModelStore, registry: TestRegistry) -> str:
    """Pull ``library/tiny`` into ``store`` as ``corral pull`` does; returns the model's name."""
    Puller(store, PullOptions(insecure=True)).pull(f"ollama://{registry.host}/library/tiny")
    return f"{registry.host}/library/tiny"
