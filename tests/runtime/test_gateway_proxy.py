"""The gateway in front of a real runtime server, driven by the official ``ollama`` and
``openai`` clients: routing by model, streaming passed through as it is produced, listings,
errors in each API's shape, and a retry on another pod when one cannot be reached."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import ollama
import openai
import pytest
import uvicorn

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.settings import GatewaySettings
from tests.runtime.conftest import RunningServer

pytestmark = pytest.mark.runtime

MODEL = "gemma3:270m"
GREEDY: dict[str, Any] = {"temperature": 0, "num_predict": 8, "seed": 7}


@contextmanager
def run_gateway(settings: GatewaySettings) -> Iterator[str]:
    """The gateway under uvicorn on a free loopback port; yields its base URL."""
    config = uvicorn.Config(
        create_gateway_app(settings), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the gateway did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def closed_port() -> str:
    """A loopback address where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def pod_address(runtime_server: RunningServer) -> str:
    return runtime_server.base_url.removeprefix("http://")


@pytest.fixture(scope="module")
def gateway_url(runtime_server: RunningServer) -> Iterator[str]:
    settings = GatewaySettings.model_validate(
        {
            "static_servers": {
                "local": {"models": [MODEL], "endpoints": [pod_address(runtime_server)]}
            }
        }
    )
    with run_gateway(settings) as url:
        yield url


@pytest.fixture
def ollama_client(gateway_url: str) -> Iterator[ollama.Client]:
    with ollama.Client(host=gateway_url) as client:
        yield client


@pytest.fixture
def openai_client(gateway_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway_url + "/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_ollama_chat_and_generate(ollama_client: ollama.Client) -> None:
    reply = ollama_client.chat(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], options=GREEDY
    )
    assert reply.done is True
    assert reply.message.role == "assistant"
    chunks = list(
        ollama_client.generate(model=MODEL, prompt="The sky is", options=GREEDY, stream=True)
    )
    assert len(chunks) >= 2
    assert chunks[-1].done is True
    assert chunks[-1].eval_count is not None and chunks[-1].eval_count > 0
    assert "".join(c.response for c in chunks).strip()


def test_ollama_streaming_chat_matches_direct(
    ollama_client: ollama.Client, runtime_server: RunningServer
) -> None:
    messages = [{"role": "user", "content": "Count to three"}]
    through = list(ollama_client.chat(model=MODEL, messages=messages, options=GREEDY, stream=True))
    with ollama.Client(host=runtime_server.base_url) as direct_client:
        direct = list(
            direct_client.chat(model=MODEL, messages=messages, options=GREEDY, stream=True)
        )
    assert [c.message.content for c in through] == [c.message.content for c in direct]


def test_ollama_unknown_model_is_404(ollama_client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        ollama_client.chat(model="missing:1b", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404
    assert "missing:1b" in caught.value.error


def test_ollama_listings(ollama_client: ollama.Client) -> None:
    assert [m.model for m in ollama_client.list().models] == [MODEL]
    ollama_client.generate(model=MODEL, prompt="Hi", options=GREEDY)
    loaded = ollama_client.ps().models
    assert [m.model for m in loaded] == [MODEL]


def test_ollama_embed(ollama_client: ollama.Client) -> None:
    result = ollama_client.embed(model=MODEL, input=["a cat", "a dog"])
    assert len(result.embeddings) == 2
    assert len(result.embeddings[0]) == 640


def test_openai_chat_and_stream(openai_client: openai.OpenAI) -> None:
    completion = openai_client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
    )
    assert completion.choices[0].message.role == "assistant"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    stream = openai_client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_openai_completions_and_embeddings(openai_client: openai.OpenAI) -> None:
    completion = openai_client.completions.create(
        model=MODEL, prompt="The sky is", max_tokens=6, temperature=0
    )
    assert completion.choices[0].text
    embedding = openai_client.embeddings.create(model=MODEL, input="hello")
    assert len(embedding.data[0].embedding) == 640


def test_openai_models_and_unknown_model(openai_client: openai.OpenAI) -> None:
    assert [m.id for m in openai_client.models.list()] == [MODEL]
    assert openai_client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(
            model="missing:1b", messages=[{"role": "user", "content": "x"}]
        )


def test_streams_are_passed_on_as_produced(gateway_url: str) -> None:
    """The first chunk reaches the client long before the last one is generated."""
    body = {"model": MODEL, "prompt": "Once upon a time", "options": {**GREEDY, "num_predict": 40}}
    arrivals: list[float] = []
    started = time.monotonic()
    with httpx.stream("POST", gateway_url + "/api/generate", json=body, timeout=60) as response:
        assert response.status_code == 200
        for _ in response.iter_lines():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 10
    # At ~30 tokens/s, 40 tokens take over a second; a buffering proxy would deliver at once.
    assert arrivals[-1] - arrivals[0] > 0.3


def test_unreachable_pod_is_retried_on_another(runtime_server: RunningServer) -> None:
    # LeastInFlight spreads the requests over both pods, so the closed one is tried (the
    # cache-aware default may keep every one on the pod that answered first).
    settings = GatewaySettings.model_validate(
        {
            "static_servers": {
                "local": {
                    "models": [MODEL],
                    "endpoints": [closed_port(), pod_address(runtime_server)],
                    "routing": "LeastInFlight",
                }
            }
        }
    )
    with run_gateway(settings) as url, ollama.Client(host=url) as client:
        for _ in range(3):
            reply = client.generate(model=MODEL, prompt="Hi", options=GREEDY)
            assert reply.done is True
        metrics = httpx.get(url + "/metrics").text
    retries = next(
        line for line in metrics.splitlines() if line.startswith("corral_gateway_upstream_retries")
    )
    assert float(retries.split()[-1]) >= 1


def test_api_key_required_when_configured(runtime_server: RunningServer) -> None:
    settings = GatewaySettings.model_validate(
        {
            "api_keys": ["k-123"],
            "static_servers": {
                "local": {"models": [MODEL], "endpoints": [pod_address(runtime_server)]}
            },
        }
    )
    with run_gateway(settings) as url:
        bad = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with bad, pytest.raises(openai.AuthenticationError):
            bad.models.list()
        with openai.OpenAI(base_url=url + "/v1", api_key="k-123", max_retries=0) as good:
            assert [m.id for m in good.models.list()] == [MODEL]
