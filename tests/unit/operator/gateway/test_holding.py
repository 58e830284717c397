"""Held requests through the whole app, against a server that never becomes ready: the deadline
answer per protocol (a real 504 when nothing was sent yet, an in-band error after heartbeats),
queue overflow (503 + Retry-After), unknown models (404 before anything is held), API keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.settings import GatewaySettings, StaticServer

pytestmark = pytest.mark.unit


def settings(**overrides: object) -> GatewaySettings:
    base: dict[str, object] = {
        "static_servers": {"cold": StaticServer(models=["gemma3:270m"], endpoints=[])},
        "hold_deadline_seconds": 0.6,
        "heartbeat_seconds": 0.2,
        "hold_queue_size": 2,
        "retry_after_seconds": 7,
    }
    base.update(overrides)
    return GatewaySettings.model_validate(base)


@pytest.fixture
async def gateway(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    overrides = getattr(request, "param", {})
    app = create_gateway_app(settings(**overrides))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


async def test_unknown_model_is_404_in_each_shape(gateway: httpx.AsyncClient) -> None:
    ollama = await gateway.post("/api/chat", json={"model": "nope"})
    assert ollama.status_code == 404
    assert ollama.json() == {"error": "model 'nope' not found"}
    openai = await gateway.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert openai.status_code == 404
    assert openai.json()["error"]["type"] == "not_found_error"


async def test_bad_body_is_400(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post("/api/generate", content=b"{")
    assert response.status_code == 400
    assert "invalid JSON" in response.json()["error"]


async def test_non_streaming_held_request_ends_with_504(gateway: httpx.AsyncClient) -> None:
    response = await gateway.post(
        "/api/generate", json={"model": "gemma3:270m", "prompt": "x", "stream": False}
    )
    assert response.status_code == 504
    assert "did not become ready" in response.json()["error"]
    openai = await gateway.post("/v1/embeddings", json={"model": "gemma3:270m", "input": "x"})
    assert openai.status_code == 504
    assert "did not become ready" in openai.json()["error"]["message"]


async def test_held_ndjson_stream_has_heartbeats_then_an_error_line(
    gateway: httpx.AsyncClient,
) -> None:
    response = await gateway.post("/api/chat", json={"model": "gemma3:270m", "messages": []})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) >= 2
    assert all(line["message"] == {"role": "assistant", "content": ""} for line in lines[:-1])
    assert all(line["done"] is False for line in lines[:-1])
    assert "did not become ready" in lines[-1]["error"]


async def test_held_sse_stream_has_comments_then_an_error_event(
    gateway: httpx.AsyncClient,
) -> None:
    response = await gateway.post(
        "/v1/chat/completions", json={"model": "gemma3:270m", "messages": [], "stream": True}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert events[0] == ": keep-alive"
    assert events[-1].startswith("data: ")
    assert "did not become ready" in json.loads(events[-1][6:])["error"]["message"]


@pytest.mark.parametrize("gateway", [{"hold_deadline_seconds": 2.0}], indirect=True)
async def test_full_queue_is_503_with_retry_after(gateway: httpx.AsyncClient) -> None:
    body = {"model": "gemma3:270m", "prompt": "x", "stream": False}
    held = [asyncio.create_task(gateway.post("/api/generate", json=body)) for _ in range(2)]
    await asyncio.sleep(0.3)
    overflow = await gateway.post("/api/generate", json=body)
    assert overflow.status_code == 503
    assert overflow.headers["retry-after"] == "7"
    assert "server busy" in overflow.json()["error"]
    assert [r.status_code for r in await asyncio.gather(*held)] == [504, 504]
    metrics = (await gateway.get("/metrics")).text
    assert (
        'corral_gateway_rejected_requests_total{model="gemma3:270m",reason="queue_full"} 1.0'
        in (metrics)
    )
    assert "corral_gateway_hold_seconds_count" in metrics


@pytest.mark.parametrize("gateway", [{"api_keys": ["secret"]}], indirect=True)
async def test_api_keys_are_checked(gateway: httpx.AsyncClient) -> None:
    denied = await gateway.get("/v1/models")
    assert denied.status_code == 401
    assert denied.json()["error"]["type"] == "authentication_error"
    allowed = await gateway.get("/api/tags", headers={"Authorization": "Bearer secret"})
    assert allowed.status_code == 200
    assert allowed.json()["models"][0]["name"] == "gemma3:270m"
    assert (await gateway.get("/")).text == "Ollama is running"
