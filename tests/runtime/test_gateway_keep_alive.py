"""A request's keep_alive through the gateway to a real runtime, in the order a user hits them:
an OpenAI-first client against a fresh pod (the operator's default of -1 keeps the model
loaded), then Ollama clients asking for ``keep_alive: -1`` (the server's idle deadline moves to
its bound) and ``keep_alive: 0`` (the model unloads and the deadline comes back to now, so the
server may go to its minimum: a 0 undoes the -1).

The gateway serves the runtime as a static server; the deadline it would write on a ModelServer
is the one its ``corral_gateway_idle_deadline_timestamp_seconds`` gauge shows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral_operator.gateway.settings import GatewaySettings
from corral_runtime.api.info import FOREVER_RFC3339
from corral_runtime.store.layout import ModelStore
from tests.runtime.conftest import RunningServer, serve, settings_for
from tests.runtime.test_gateway_proxy import run_gateway

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
MAX_KEEP_ALIVE = 600.0


@pytest.fixture(scope="module")
def pod(model_store: ModelStore) -> Iterator[RunningServer]:
    """A runtime as the operator starts it: CORRAL_KEEP_ALIVE_SECONDS=-1."""
    with serve(settings_for(model_store.root, keep_alive_seconds="-1"), model_store) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(pod: RunningServer) -> Iterator[str]:
    settings = GatewaySettings.model_validate(
        {
            "static_servers": {
                "pod": {"models": [MODEL], "endpoints": [pod.base_url.removeprefix("http://")]}
            },
            "activity_interval_seconds": 0.2,
            "max_keep_alive_seconds": MAX_KEEP_ALIVE,
        }
    )
    with run_gateway(settings) as url:
        yield url


def idle_deadline(gateway: str) -> float | None:
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "corral_gateway_idle_deadline_timestamp_seconds":
            for sample in family.samples:
                if sample.labels.get("server") == "pod":
                    return float(sample.value)
    return None


def settled(gateway: str, check: object, timeout: float = 10.0) -> float | None:
    """The gauge once ``check(value)`` holds (the gateway writes activity every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = idle_deadline(gateway)
        if check(value):  # type: ignore[operator]
            return value
        assert time.monotonic() < deadline, f"idle deadline stayed {value}"
        time.sleep(0.1)


def loaded(pod: RunningServer) -> dict[str, str]:
    models = httpx.get(f"{pod.base_url}/api/ps", timeout=10).json()["models"]
    return {m["model"]: m["expires_at"] for m in models}


def test_keep_alive_through_the_gateway_in_a_users_order(pod: RunningServer, gateway: str) -> None:
    # 1. An OpenAI client first: no keep_alive, so the pod's default (-1) keeps the model, and
    #    the server's own keepAliveSeconds decides (no deadline of a request's).
    with openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
        )
    assert answer.choices[0].message.content is not None
    assert loaded(pod) == {MODEL: FOREVER_RFC3339}
    time.sleep(0.5)
    assert idle_deadline(gateway) is None

    with ollama.Client(host=gateway) as client:
        # 2. keep_alive -1: forever on the pod, the server's bound on the deadline.
        before = time.time()
        client.generate(model=MODEL, prompt="", keep_alive=-1)
        forever = settled(gateway, lambda v: v is not None and v > before + 60)
        assert forever is not None
        assert before + MAX_KEEP_ALIVE <= forever <= time.time() + MAX_KEEP_ALIVE
        assert loaded(pod) == {MODEL: FOREVER_RFC3339}

        # 3. keep_alive 0: the model unloads now, and the deadline comes back to now.
        client.generate(model=MODEL, prompt="", keep_alive=0)
        now = settled(gateway, lambda v: v is not None and v < before + 60)
        assert now is not None and before <= now <= time.time()
        assert loaded(pod) == {}

        # 4. A duration: the model stays that long after the request, and so does the server.
        before = time.time()
        client.generate(model=MODEL, prompt="Hi", keep_alive="2m", options={"num_predict": 2})
        minutes = settled(gateway, lambda v: v is not None and v > before + 60)
        assert minutes is not None and before + 120 <= minutes <= time.time() + 120
        assert MODEL in loaded(pod)
