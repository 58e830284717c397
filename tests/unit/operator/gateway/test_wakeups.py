"""A server that was asked for replicas but shows no pod yet is woken again only now and then:
every routing-table change while its pod starts must not turn into another write. A starting pod
that requests wait for is probed by the gateway and takes them as soon as it answers."""

from __future__ import annotations

import asyncio
from datetime import datetime

import aiohttp
import pytest
from aiohttp import web

from corral_operator.gateway.backend import ActivityReport, KeysListener, SnapshotListener
from corral_operator.gateway.dispatcher import WAKE_RETRY_SECONDS, Dispatcher
from corral_operator.gateway.metrics import GatewayMetrics
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.topology import ServerKey, ServerView, Snapshot

pytestmark = pytest.mark.unit

KEY: ServerKey = ("ns", "gemma")


class RecordingBackend:
    def __init__(self) -> None:
        self.scaled: list[int] = []

    def start(self, on_snapshot: SnapshotListener, on_keys: KeysListener) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def scale(self, server: ServerKey, replicas: int, now: datetime) -> None:
        self.scaled.append(replicas)

    async def report_activity(self, server: ServerKey, report: ActivityReport) -> None:
        return None


async def settle() -> None:
    # The dispatcher writes from tasks of its own; let them run.
    for _ in range(5):
        await asyncio.sleep(0)


def starting(generation: int) -> Snapshot:
    # Replicas asked for (desired 1), no ready pod yet; status text changes as the pod starts.
    view = ServerView(key=KEY, desired=1, status_message=f"starting ({generation})")
    return Snapshot(servers={KEY: view})


async def test_a_starting_server_is_woken_once_per_retry_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("corral_operator.gateway.dispatcher.time.monotonic", lambda: clock[0])
    backend = RecordingBackend()
    async with aiohttp.ClientSession() as client:
        dispatcher = Dispatcher(GatewaySettings(), backend, GatewayMetrics(), client)
        dispatcher.update(starting(0))
        hold = dispatcher.hold("gemma3:270m", KEY)
        for generation in range(1, 20):
            dispatcher.update(starting(generation))
        await settle()
        assert backend.scaled == [1]
        clock[0] += WAKE_RETRY_SECONDS + 1
        dispatcher.update(starting(99))
        await settle()
        assert backend.scaled == [1, 1]
        hold.release()


class StartingPod:
    """A pod's HTTP server on loopback whose ``/readyz`` answers 503 until it is made ready."""

    def __init__(self) -> None:
        self.ready = False
        self.probes = 0
        app = web.Application()
        app.router.add_get("/readyz", self._readyz)
        self.runner = web.AppRunner(app)

    async def _readyz(self, request: web.Request) -> web.Response:
        self.probes += 1
        return web.Response(status=200 if self.ready else 503)

    async def __aenter__(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def with_starting(endpoint: str, desired: int = 1) -> Snapshot:
    view = ServerView(key=KEY, desired=desired, starting=(endpoint,))
    return Snapshot(servers={KEY: view})


async def test_a_held_request_takes_a_starting_pod_once_it_answers_its_probe() -> None:
    loop = asyncio.get_running_loop()
    pod = StartingPod()
    async with pod as endpoint, aiohttp.ClientSession() as client:
        dispatcher = Dispatcher(GatewaySettings(), RecordingBackend(), GatewayMetrics(), client)
        dispatcher.update(with_starting(endpoint))
        assert dispatcher.try_pick(KEY) is None  # nobody waits: nothing probes it
        hold = dispatcher.hold("gemma3:270m", KEY)
        assert await dispatcher.wait_for_endpoint(KEY, (), loop.time() + 0.3) is None
        assert pod.probes >= 2  # asked again and again while it answers 503
        pod.ready = True
        started = loop.time()
        assert await dispatcher.wait_for_endpoint(KEY, (), loop.time() + 5) == endpoint
        assert loop.time() - started < 1.0  # well within one kubelet probe period
        hold.release()
        await dispatcher.stop()


async def test_a_probed_pod_stops_taking_requests_when_it_leaves_the_starting_list() -> None:
    pod = StartingPod()
    pod.ready = True
    async with pod as endpoint, aiohttp.ClientSession() as client:
        dispatcher = Dispatcher(GatewaySettings(), RecordingBackend(), GatewayMetrics(), client)
        dispatcher.update(with_starting(endpoint))
        hold = dispatcher.hold("gemma3:270m", KEY)
        loop = asyncio.get_running_loop()
        assert await dispatcher.wait_for_endpoint(KEY, (), loop.time() + 5) == endpoint
        hold.release()
        dispatcher.update(Snapshot(servers={KEY: ServerView(key=KEY, desired=1)}))
        assert dispatcher.try_pick(KEY) is None  # its pod is gone
        dispatcher.update(with_starting(endpoint, desired=0))
        assert dispatcher.try_pick(KEY) is None  # scaled to zero: no new requests
        await dispatcher.stop()


async def test_starting_pods_are_left_to_the_cluster_when_probing_is_off() -> None:
    pod = StartingPod()
    pod.ready = True
    async with pod as endpoint, aiohttp.ClientSession() as client:
        settings = GatewaySettings(probe_starting_pods=False)
        dispatcher = Dispatcher(settings, RecordingBackend(), GatewayMetrics(), client)
        dispatcher.update(with_starting(endpoint))
        hold = dispatcher.hold("gemma3:270m", KEY)
        loop = asyncio.get_running_loop()
        assert await dispatcher.wait_for_endpoint(KEY, (), loop.time() + 0.3) is None
        assert pod.probes == 0
        hold.release()
        await dispatcher.stop()
