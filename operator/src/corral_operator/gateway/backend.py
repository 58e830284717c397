"""Where the gateway's routing table comes from and where its writes go.

``Backend`` is what the dispatcher needs from the outside world: a stream of routing tables,
the accepted API keys, a way to scale a server up, and a way to record activity. The cluster
implementation is ``corral_operator.gateway.cluster.ClusterBackend``; ``StaticBackend`` serves
fixed runtime servers without Kubernetes (it cannot scale, and keeps no activity record).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.topology import ServerKey, Snapshot, static_snapshot

SnapshotListener = Callable[[Snapshot], None]
KeysListener = Callable[[frozenset[str]], None]


@dataclass(frozen=True, slots=True)
class ActivityReport:
    last_request_time: datetime
    idle_deadline: datetime | None
    """When every served model has expired by its latest request's ``keep_alive`` (bounded by
    the server's maxKeepAliveSeconds); None while no request set one."""
    in_flight: int


class Backend(Protocol):
    def start(self, on_snapshot: SnapshotListener, on_keys: KeysListener) -> None:
        """Begin delivering routing tables and API keys; listeners run on the event loop."""

    async def stop(self) -> None: ...

    async def scale(self, server: ServerKey, replicas: int, now: datetime) -> None:
        """Ask for at least ``replicas`` pods, recording ``now`` as activity first so that the
        keep-alive never takes the wake-up for an idle server."""

    async def report_activity(self, server: ServerKey, report: ActivityReport) -> None: ...


class StaticBackend:
    """Fixed runtime servers from the settings; no Kubernetes."""

    def __init__(self, settings: GatewaySettings) -> None:
        servers = settings.static_servers
        self._snapshot = static_snapshot(
            {name: (s.models, s.endpoints) for name, s in servers.items()},
            {name: s.routing for name, s in servers.items()},
        )
        self._keys = frozenset(settings.api_keys)

    def start(self, on_snapshot: SnapshotListener, on_keys: KeysListener) -> None:
        on_snapshot(self._snapshot)
        on_keys(self._keys)

    async def stop(self) -> None:
        return None

    async def scale(self, server: ServerKey, replicas: int, now: datetime) -> None:
        # Fixed servers are started by whoever configured them; held requests wait for nothing.
        return None

    async def report_activity(self, server: ServerKey, report: ActivityReport) -> None:
        return None
