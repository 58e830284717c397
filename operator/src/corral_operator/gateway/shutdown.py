"""Graceful removal: on SIGTERM the gateway drains before it exits.

In a pod, the preStop sleep keeps the gateway serving while the Service's Endpoints drop it;
then SIGTERM. From then on, new requests (``/readyz`` among them) answer 503 with
``Retry-After`` and ``Connection: close`` (the client's retry reaches another gateway pod),
while requests in flight go on: those held for a server waking from zero, and those being
proxied, streams included. ``/healthz`` stays 200 so that a liveness probe does not kill a pod
finishing its work. Once nothing is in flight, or ``graceful_shutdown_seconds`` is spent,
uvicorn's own shutdown runs with what is left of it. A second SIGTERM, or SIGINT, shuts down at
once, as uvicorn does.

The runtime's ``corral_runtime.shutdown`` does the same for ``corral serve``; the operator's
image does not hold the runtime, so this is its small mirror.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from corral_operator.gateway.errors import error_response

log = logging.getLogger(__name__)

# The paths that answer while draining: the process is alive and finishing its work.
_ALIVE_PATHS = frozenset({"/healthz"})
DRAINING_MESSAGE = "the gateway is shutting down; try again"


@dataclass
class DrainState:
    """Shared by the middleware (counts requests, refuses new ones) and the server."""

    draining: bool = False
    in_flight: int = 0


def refuses(state: DrainState, path: str) -> bool:
    """Whether a new request for ``path`` is refused (503) now."""
    return state.draining and path not in _ALIVE_PATHS


def drained(state: DrainState, now: float, deadline: float) -> bool:
    """Whether a draining gateway may go on to shut down."""
    return state.in_flight == 0 or now >= deadline


class Draining:
    """Counts the requests in flight and, once draining, refuses new ones (503)."""

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if refuses(self.state, path):
            refused = error_response(
                path, 503, DRAINING_MESSAGE, headers={"Retry-After": "1", "Connection": "close"}
            )
            await refused(scope, receive, send)
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain of up to ``grace_seconds`` on the first SIGTERM."""

    def __init__(self, config: uvicorn.Config, state: DrainState, grace_seconds: float) -> None:
        super().__init__(config)
        self.drain = state
        self.grace_seconds = grace_seconds
        self.deadline: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self.deadline is None and not self.should_exit:
            log.info("SIGTERM: draining (up to %ss)", self.grace_seconds)
            self.deadline = time.monotonic() + self.grace_seconds
            self.drain.draining = True
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.deadline is not None and not self.should_exit:
            now = time.monotonic()
            if drained(self.drain, now, self.deadline):
                # What is left of the grace bounds uvicorn's wait for what still runs.
                self.config.timeout_graceful_shutdown = max(1, round(self.deadline - now))
                self.should_exit = True
        return await super().on_tick(counter)
