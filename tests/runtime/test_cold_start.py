"""A cold ``corral serve``: its first ``/readyz`` 200 still means "can serve now" while
llama.cpp's bindings are imported in the background (``CORRAL_EARLY_ENGINE_IMPORT``, the
default) as when they are imported on first use: the request sent the moment it is ready loads
the model and is answered."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TEST_MODEL_NAME
from tests.support.serveproc import serving_process

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


@pytest.mark.parametrize("early_import", ["true", "false"])
def test_the_request_sent_when_first_ready_is_served(
    model_store: ModelStore, tmp_path: Path, early_import: str
) -> None:
    with (
        serving_process(
            model_store.root,
            "--threads",
            "2",
            "--parallel",
            "1",
            log=tmp_path / "serve.log",
            env={"CORRAL_EARLY_ENGINE_IMPORT": early_import},
        ) as server,
        httpx.Client(base_url=server.base_url, timeout=300) as client,
    ):
        ready = first_ready(client)
        assert ready.status_code == 200, server.log_tail()
        assert ready.json() == {"status": "ready", "models": []}
        answer = client.post(
            "/api/generate",
            json={
                "model": TEST_MODEL_NAME,
                "prompt": "Name three colours.",
                "stream": False,
                "options": {"temperature": 0, "num_predict": 4},
            },
        )
        assert answer.status_code == 200, server.log_tail()
        body = answer.json()
        assert body["response"]
        assert body["load_duration"] > 0  # this request loaded the model
        assert client.get("/readyz").json() == {"status": "ready", "models": [TEST_MODEL_NAME]}
        assert "Traceback" not in server.log.read_text(errors="replace")
