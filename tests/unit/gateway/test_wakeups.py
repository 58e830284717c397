"""A server that was asked for replicas but shows no pod yet is woken again only now and then:
every routing-table change while its pod starts must not turn into another write."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx
import pytest

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
    async with httpx.AsyncClient() as client:
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
