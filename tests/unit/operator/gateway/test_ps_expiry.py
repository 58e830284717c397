"""``/api/ps`` through the gateway says when a model really goes: a runtime pod keeps its models
for as long as it runs (it answers "forever"), so the gateway gives each the moment its server
goes to zero replicas, the keep-alive the gateway and the operator keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from corral_operator.gateway.listing import expiring_at
from corral_operator.gateway.topology import ServerView
from tests.unit.operator.gateway.test_unload import KEY, MODEL, ClusterLikeBackend, running

pytestmark = pytest.mark.unit

FOREVER_STAMP = "2318-03-08T03:35:00Z"  # what a pod with keep-alive forever answers


def test_expiring_at_replaces_every_models_expiry_or_keeps_the_pods() -> None:
    answer = {"models": [{"name": "a", "expires_at": FOREVER_STAMP}, {"name": "b"}]}
    at = datetime(2026, 12, 6, 17, 0, tzinfo=UTC)
    assert [m["expires_at"] for m in expiring_at(answer, at)["models"]] == [
        "2026-12-06T17:00:00Z",
        "2026-12-06T17:00:00Z",
    ]
    assert expiring_at(answer, None) == answer
    assert answer["models"][0]["expires_at"] == FOREVER_STAMP  # not changed in place


class PsPod:
    """A runtime pod on loopback: answers /api/generate, and /api/ps as a pod in a cluster does
    (its one model, loaded forever)."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None

    async def _generate(self, request: web.Request) -> web.Response:
        return web.json_response({"model": MODEL, "response": "hi", "done": True})

    async def _ps(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": MODEL, "expires_at": FOREVER_STAMP}]})

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_post("/api/generate", self._generate)
        app.router.add_get("/api/ps", self._ps)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        return f"127.0.0.1:{self._runner.addresses[0][1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def expiry(body: dict[str, object]) -> datetime:
    (model,) = body["models"]  # type: ignore[misc]
    return datetime.fromisoformat(str(model["expires_at"]))


@pytest.mark.parametrize(
    ("request_keep_alive", "expected_seconds"),
    [(None, 300), ("10m", 600), (0, 0)],
    ids=["the server's keepAliveSeconds", "the request's keep_alive", "stopped"],
)
async def test_a_scale_to_zero_servers_models_expire_when_it_goes(
    request_keep_alive: str | int | None, expected_seconds: int
) -> None:
    async with PsPod() as address:
        view = ServerView(key=KEY, endpoints=(address,), desired=1, keep_alive_seconds=300)
        async with running(ClusterLikeBackend(view)) as (client, _):
            # Nothing asked through this gateway yet: the pod's own answer.
            assert expiry((await client.get("/api/ps")).json()).year == 2318
            body = {"model": MODEL, "prompt": "hi", "stream": False}
            if request_keep_alive is not None:
                body["keep_alive"] = request_keep_alive
            asked = datetime.now(UTC)
            assert (await client.post("/api/generate", json=body)).status_code == 200
            until = expiry((await client.get("/api/ps")).json())
    expected = asked + timedelta(seconds=expected_seconds)
    assert abs((until - expected).total_seconds()) < 5


async def test_a_server_kept_up_by_min_replicas_keeps_the_pods_answer() -> None:
    async with PsPod() as address:
        view = ServerView(key=KEY, endpoints=(address,), desired=1, min_replicas=1)
        async with running(ClusterLikeBackend(view)) as (client, _):
            await client.post("/api/generate", json={"model": MODEL, "prompt": "hi"})
            assert expiry((await client.get("/api/ps")).json()).year == 2318
