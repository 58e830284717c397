"""``ollama stop`` (an unload: keep_alive 0, nothing to generate) through the whole gateway app:
a server at zero replicas is not woken for it, the gateway answers in the runtime's shape; a
running server gets it forwarded, and the keep_alive 0 the gateway records lets the operator's
keep-alive decision take the server down to minReplicas at its next look."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
import pytest
from aiohttp import web
from fastapi import FastAPI

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.backend import ActivityReport, KeysListener, SnapshotListener
from corral_operator.gateway.deps import dispatcher_of
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.topology import ModelEntry, ServerKey, ServerView, Snapshot
from corral_operator.planners.replicas import Activity, decide_replicas

pytestmark = pytest.mark.unit

KEY: ServerKey = ("ns", "gemma")
MODEL = "gemma3:270m"
UNLOAD = {"model": MODEL, "keep_alive": 0}


class ClusterLikeBackend:
    """One ModelServer serving MODEL, as the cluster would show it; records what the gateway
    asks of the cluster (scale-ups, activity)."""

    def __init__(self, view: ServerView) -> None:
        self.view = view
        self.scaled: list[int] = []
        self.reports: list[ActivityReport] = []

    def start(self, on_snapshot: SnapshotListener, on_keys: KeysListener) -> None:
        entry = ModelEntry(name=MODEL, server=KEY, ready=True)
        on_snapshot(Snapshot(servers={KEY: self.view}, routes={MODEL: (entry,)}))
        on_keys(frozenset())

    async def stop(self) -> None:
        return None

    async def scale(self, server: ServerKey, replicas: int, now: datetime) -> None:
        self.scaled.append(replicas)

    async def report_activity(self, server: ServerKey, report: ActivityReport) -> None:
        self.reports.append(report)


class Pod:
    """A runtime pod on loopback that records the bodies of /api/generate and answers as the
    runtime answers an unload."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, object]] = []
        self._runner: web.AppRunner | None = None

    async def _generate(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.json_response({"model": MODEL, "done": True, "done_reason": "unload"})

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/api/generate", self._generate)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def settings() -> GatewaySettings:
    return GatewaySettings.model_validate(
        {"hold_deadline_seconds": 0.5, "heartbeat_seconds": 0.2, "probe_starting_pods": False}
    )


async def settle() -> None:
    # The dispatcher scales from tasks of its own; let them run.
    for _ in range(5):
        await asyncio.sleep(0)


@asynccontextmanager
async def running(backend: ClusterLikeBackend) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_gateway_app(settings(), backend)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client, app


def replicas_after(report: ActivityReport, now: datetime, requested: int) -> tuple[int, str]:
    """What the operator's keep-alive decides from the activity the gateway recorded."""
    activity = Activity(report.last_request_time, report.in_flight, report.idle_deadline)
    decision = decide_replicas(
        min_replicas=0, max_replicas=1, requested=requested, now=now, activity=activity
    )
    return decision.replicas, decision.reason


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        ("/api/generate", {"response": ""}),
        ("/api/chat", {"message": {"role": "assistant", "content": ""}}),
    ],
)
async def test_an_unload_for_a_server_at_zero_replicas_does_not_wake_it(
    path: str, answer: dict[str, object]
) -> None:
    backend = ClusterLikeBackend(ServerView(key=KEY, desired=0))
    async with running(backend) as (client, app):
        response = await client.post(path, json=UNLOAD)
        await settle()
        assert response.status_code == 200
        body = response.json()
        assert body.items() >= {"model": MODEL, "done": True, "done_reason": "unload"}.items()
        assert body.items() >= answer.items()
        assert backend.scaled == []
        await dispatcher_of(app).flush_activity(force=True)
    # The model's keep_alive 0 is recorded: whatever wakes the server later, this model
    # keeps it up no longer.
    deadline = backend.reports[-1].idle_deadline
    assert deadline is not None and deadline <= datetime.now(UTC)


async def test_a_request_with_something_to_generate_does_wake_it() -> None:
    # The same server and keep_alive, with a prompt: held, and the server asked for a pod.
    backend = ClusterLikeBackend(ServerView(key=KEY, desired=0))
    async with running(backend) as (client, _):
        response = await client.post(
            "/api/generate", json={**UNLOAD, "prompt": "hi", "stream": False}
        )
        assert response.status_code == 504
        assert backend.scaled == [1]


async def test_an_unload_for_a_running_server_is_forwarded_and_lets_it_go() -> None:
    pod = Pod()
    async with pod as address:
        backend = ClusterLikeBackend(ServerView(key=KEY, endpoints=(address,), desired=1))
        async with running(backend) as (client, app):
            response = await client.post("/api/generate", json=UNLOAD)
            assert response.json()["done_reason"] == "unload"
            assert backend.scaled == []
            await dispatcher_of(app).flush_activity(force=True)
        assert pod.bodies == [UNLOAD]
    # At the operator's next look the keep-alive has run out: down to minReplicas.
    assert replicas_after(backend.reports[-1], datetime.now(UTC), requested=1) == (
        0,
        "KeepAliveExpired",
    )
