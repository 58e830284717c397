"""The gateway's drain on SIGTERM (corral_operator.gateway.shutdown): which requests are refused
while draining, when the drain may end, and, in the whole app, a held request that goes on
while new ones answer 503."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.shutdown import DrainState, drained, refuses

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("draining", "path", "refused"),
    [
        (False, "/api/chat", False),
        (False, "/readyz", False),
        (True, "/api/chat", True),
        (True, "/v1/chat/completions", True),
        (True, "/readyz", True),  # the Service stops sending new requests here
        (True, "/api/tags", True),
        (True, "/healthz", False),  # liveness: the process is alive, finishing its work
    ],
)
def test_refuses(draining: bool, path: str, refused: bool) -> None:
    assert refuses(DrainState(draining=draining), path) is refused


@pytest.mark.parametrize(
    ("in_flight", "now", "done"),
    [(0, 0.0, True), (3, 0.0, False), (3, 9.9, False), (3, 10.0, True), (0, 11.0, True)],
)
def test_drained(in_flight: int, now: float, done: bool) -> None:
    assert drained(DrainState(draining=True, in_flight=in_flight), now, deadline=10.0) is done


async def test_a_held_request_goes_on_while_new_ones_are_refused() -> None:
    settings = GatewaySettings.model_validate(
        {
            # No endpoint: a request is held until its deadline, as for a server at zero.
            "static_servers": {"cold": {"models": ["gemma3:270m"], "endpoints": []}},
            "hold_deadline_seconds": 1.0,
            "heartbeat_seconds": 0.2,
        }
    )
    app = create_gateway_app(settings)
    drain: DrainState = app.state.drain
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            body = {"model": "gemma3:270m", "prompt": "x", "stream": False}
            held = asyncio.create_task(client.post("/api/generate", json=body))
            await asyncio.sleep(0.3)  # well within the hold deadline
            assert drain.in_flight == 1
            drain.draining = True
            assert not drained(drain, now=0.0, deadline=1.0)
            late = await client.post("/api/generate", json=body)
            late_openai = await client.post(
                "/v1/chat/completions", json={"model": "gemma3:270m", "messages": []}
            )
            ready = await client.get("/readyz")
            alive = await client.get("/healthz")
            assert not held.done()
            answer = await held
    assert late.status_code == 503
    assert late.headers["retry-after"] == "1"
    assert late.json() == {"error": "the gateway is shutting down; try again"}
    assert late_openai.status_code == 503
    assert late_openai.json()["error"]["message"] == "the gateway is shutting down; try again"
    assert ready.status_code == 503
    assert alive.status_code == 200
    # The held request ran its course (its own deadline here: no server ever started).
    assert answer.status_code == 504
    assert drain.in_flight == 0
