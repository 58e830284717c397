"""Request priorities at the gateway: the class a request is forwarded with (its header, its API
key's class as a ceiling, the server's default), the order held requests are released in once a
pod is ready, and the held-request metrics per class."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.backend import StaticBackend
from corral_operator.gateway.deps import dispatcher_of
from corral_operator.gateway.dispatcher import Dispatcher
from corral_operator.gateway.metrics import GatewayMetrics
from corral_operator.gateway.priority import (
    PriorityConfig,
    UnknownPriorityError,
    key_fingerprint,
    priority_config,
    release_order,
    request_priority,
    with_priority,
)
from corral_operator.gateway.settings import GatewaySettings, StaticServer
from corral_operator.gateway.topology import ModelEntry, ServerKey, ServerView, Snapshot

pytestmark = pytest.mark.unit

KEY: ServerKey = ("ns", "gemma")
BATCH_KEY, CHAT_KEY = "k-batch", "k-chat"
CONFIG = PriorityConfig(
    keys={hashlib.sha256(BATCH_KEY.encode()).hexdigest(): "batch"},
)


def bearer(key: str) -> str:
    return f"Bearer {key}"


class TestRequestPriority:
    def test_no_header_and_no_mapped_key_is_the_servers_default(self) -> None:
        assert request_priority(None, None, CONFIG) == "interactive"
        assert request_priority(None, bearer(CHAT_KEY), PriorityConfig(default="batch")) == "batch"

    def test_the_header_chooses_the_class(self) -> None:
        assert request_priority("batch", bearer(CHAT_KEY), CONFIG) == "batch"
        assert request_priority(" Interactive ", None, PriorityConfig(default="batch")) == (
            "interactive"
        )

    def test_a_mapped_key_is_its_requests_class(self) -> None:
        assert request_priority(None, bearer(BATCH_KEY), CONFIG) == "batch"

    def test_a_mapped_key_caps_what_the_header_asks(self) -> None:
        assert request_priority("interactive", bearer(BATCH_KEY), CONFIG) == "batch"

    def test_an_unknown_class_is_refused(self) -> None:
        with pytest.raises(UnknownPriorityError, match="interactive, batch"):
            request_priority("urgent", None, CONFIG)

    def test_keys_are_named_by_their_sha256(self) -> None:
        assert key_fingerprint("Bearer  abc ") == hashlib.sha256(b"abc").hexdigest()
        assert key_fingerprint("Basic abc") is None
        assert key_fingerprint(None) is None

    def test_the_forwarded_header_is_the_decided_class(self) -> None:
        headers = [("X-Corral-Priority", "interactive"), ("Authorization", "Bearer k")]
        assert with_priority(headers, "batch") == [
            ("Authorization", "Bearer k"),
            ("x-corral-priority", "batch"),
        ]

    def test_the_spec_is_read(self) -> None:
        digest = "AB" * 32
        spec = {
            "priority": {
                "defaultClass": "batch",
                "agingSeconds": 12,
                "apiKeys": [{"sha256": digest, "class": "interactive"}],
            }
        }
        assert priority_config(spec) == PriorityConfig(
            default="batch", aging_s=12.0, keys={digest.lower(): "interactive"}
        )
        assert priority_config({}) == PriorityConfig()


class TestReleaseOrder:
    def test_higher_class_first_then_longest_held(self) -> None:
        held = [("batch", 5.0), ("interactive", 1.0), ("batch", 6.0), ("interactive", 2.0)]
        assert release_order(held, 30.0) == [3, 1, 2, 0]

    def test_a_batch_request_held_long_enough_goes_first(self) -> None:
        assert release_order([("interactive", 1.0), ("batch", 40.0)], 30.0) == [1, 0]


def scaled_to(endpoints: tuple[str, ...]) -> Snapshot:
    view = ServerView(key=KEY, endpoints=endpoints, desired=1, scalable=False)
    return Snapshot(servers={KEY: view})


async def test_held_requests_are_released_higher_class_first() -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as client:
        settings = GatewaySettings()
        dispatcher = Dispatcher(settings, StaticBackend(settings), GatewayMetrics(), client)
        dispatcher.update(scaled_to(()))
        released: list[str] = []

        async def held(name: str, priority: str) -> None:
            hold = dispatcher.hold("gemma3:270m", KEY, priority)
            await dispatcher.wait_for_endpoint(KEY, (), loop.time() + 5, hold)
            released.append(name)
            hold.release()

        # Arrival order: two batch requests, then an interactive one.
        tasks = []
        for name, priority in (("batch-1", "batch"), ("batch-2", "batch"), ("chat", "interactive")):
            tasks.append(asyncio.create_task(held(name, priority)))
            await asyncio.sleep(0.01)
        page = dispatcher.metrics.exposition().decode()
        assert (
            'corral_gateway_held_requests_by_priority{model="gemma3:270m",priority="batch"} 2.0'
            in page
        )
        dispatcher.update(scaled_to(("10.0.0.1:11434",)))
        await asyncio.gather(*tasks)
        assert released == ["chat", "batch-1", "batch-2"]
        page = dispatcher.metrics.exposition().decode()
        assert (
            'corral_gateway_held_requests_by_priority{model="gemma3:270m",priority="batch"} 0.0'
            in page
        )
        assert (
            'corral_gateway_hold_seconds_by_priority_count{model="gemma3:270m",'
            'priority="interactive"} 1.0' in page
        )
        await dispatcher.stop()


class RecordingPod:
    """A runtime pod that answers every generation and remembers the class it was sent."""

    def __init__(self) -> None:
        self.priorities: list[str | None] = []
        self.app = web.Application()
        self.app.router.add_post("/api/generate", self._generate)

    async def _generate(self, request: web.Request) -> web.Response:
        self.priorities.append(request.headers.get("X-Corral-Priority"))
        return web.json_response({"response": "", "done": True})


@pytest.fixture
async def pod_and_gateway() -> AsyncIterator[tuple[RecordingPod, httpx.AsyncClient]]:
    pod = RecordingPod()
    async with TestServer(pod.app, host="127.0.0.1") as server:
        endpoint = f"127.0.0.1:{server.port}"
        static = {"gemma": StaticServer(models=["gemma3:270m"], endpoints=[endpoint])}
        app = create_gateway_app(GatewaySettings(static_servers=static))
        async with app.router.lifespan_context(app):
            view = ServerView(
                key=KEY, endpoints=(endpoint,), desired=1, scalable=False, priority=CONFIG
            )
            entry = ModelEntry(name="gemma3:270m", server=KEY, ready=True)
            dispatcher_of(app).update(
                Snapshot(servers={KEY: view}, routes={"gemma3:270m": (entry,)})
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                yield pod, client


async def test_the_gateway_forwards_the_class_its_rules_decide(
    pod_and_gateway: tuple[RecordingPod, httpx.AsyncClient],
) -> None:
    pod, gateway = pod_and_gateway
    body = {"model": "gemma3:270m", "prompt": "x", "stream": False}
    sent = [
        {},
        {"X-Corral-Priority": "batch"},
        {"Authorization": bearer(BATCH_KEY)},
        {"Authorization": bearer(BATCH_KEY), "X-Corral-Priority": "interactive"},
    ]
    for headers in sent:
        response = await gateway.post("/api/generate", json=body, headers=headers)
        assert response.status_code == 200
    assert pod.priorities == ["interactive", "batch", "batch", "batch"]
    refused = await gateway.post(
        "/api/generate", json=body, headers={"X-Corral-Priority": "urgent"}
    )
    assert refused.status_code == 400
    assert "interactive, batch" in refused.json()["error"]
    assert len(pod.priorities) == 4
