"""The gateway's front door (corral_operator.gateway.middleware and auth.needs_key): which
requests need an API key, the 401 in each API's shape, each routed request counted once
with the model its route named, and routed requests handed to their route past the router."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.auth import needs_key
from corral_operator.gateway.middleware import RoutedDirect
from corral_operator.gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/generate"),
        ("POST", "/api/chat"),
        ("POST", "/api/show"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/embeddings"),
        ("GET", "/api/tags"),
        ("GET", "/api/ps"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/gemma3:270m"),
    ],
)
def test_routed_endpoints_and_listings_need_a_key(method: str, path: str) -> None:
    assert needs_key(method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("HEAD", "/"),
        ("GET", "/api/version"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        # Not served by the gateway: a 404 that needs no key.
        ("GET", "/api/chat"),
        ("POST", "/api/tags"),
        ("HEAD", "/api/tags"),
        ("POST", "/api/pull"),
        ("DELETE", "/api/delete"),
    ],
)
def test_probes_metrics_and_what_is_not_served_are_open(method: str, path: str) -> None:
    assert not needs_key(method, path)


@pytest.fixture
async def gateway() -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings.model_validate(
        {
            "api_keys": ["secret"],
            # No endpoint and no room to hold: a known model is answered 503 at once.
            "static_servers": {"cold": {"models": ["gemma3:270m"], "endpoints": []}},
            "hold_queue_size": 0,
        }
    )
    app = create_gateway_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def requests_total(metrics: str) -> list[str]:
    return sorted(
        line for line in metrics.splitlines() if line.startswith("corral_gateway_requests_total")
    )


async def test_a_refused_request_is_401_in_its_api_shape_and_not_counted(
    gateway: httpx.AsyncClient,
) -> None:
    ollama = await gateway.post("/api/chat", json={"model": "gemma3:270m"})
    openai = await gateway.post(
        "/v1/chat/completions",
        json={"model": "gemma3:270m"},
        headers={"Authorization": "Bearer wrong"},
    )
    assert ollama.status_code == 401
    assert ollama.json() == {"error": "invalid or missing API key"}
    assert openai.status_code == 401
    assert openai.json()["error"]["type"] == "authentication_error"
    assert requests_total((await gateway.get("/metrics")).text) == []


async def test_each_routed_request_is_counted_once_with_its_model(
    gateway: httpx.AsyncClient,
) -> None:
    key = {"Authorization": "Bearer secret"}
    busy = await gateway.post("/api/generate", json={"model": "Gemma3:270M"}, headers=key)
    unknown = await gateway.post("/api/generate", json={"model": "nope"}, headers=key)
    listed = await gateway.get("/api/tags", headers=key)
    assert (busy.status_code, unknown.status_code, listed.status_code) == (503, 404, 200)
    assert requests_total((await gateway.get("/metrics")).text) == [
        'corral_gateway_requests_total{model="",path="/api/generate",status="404"} 1.0',
        'corral_gateway_requests_total{model="gemma3:270m",path="/api/generate",status="503"} 1.0',
    ]


@pytest.mark.parametrize(
    ("method", "path", "direct"),
    [
        ("POST", "/api/generate", True),
        ("POST", "/v1/chat/completions", True),
        ("GET", "/api/generate", False),  # the router answers 405
        ("POST", "/api/pull", False),  # the router answers 404
        ("GET", "/api/tags", False),
    ],
)
async def test_routed_requests_skip_the_router(method: str, path: str, direct: bool) -> None:
    called: list[str] = []

    def recording(name: str) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            called.append(name)

        return app

    async def nothing() -> Message:
        return {"type": "http.disconnect"}

    async def ignore(message: Message) -> None:
        pass

    middleware = RoutedDirect(recording("router"), routed=recording("routed"))
    await middleware({"type": "http", "method": method, "path": path}, nothing, ignore)
    assert called == ["routed" if direct else "router"]
