"""Graceful shutdown: on SIGTERM the server drains before it exits.

While draining, requests in flight (streams included) go on; new ones, ``/readyz`` among them,
answer 503 with ``Retry-After`` and ``Connection: close`` (a gateway tries another pod), and
``/healthz`` stays 200 so that a liveness probe does not kill a pod finishing its work. Once
nothing is in flight, or the grace is spent, uvicorn's own shutdown runs: listeners close, what
is still running after the rest of the grace is cancelled, models are unloaded.

A second SIGTERM, or SIGINT (Ctrl-C), shuts down at once, as uvicorn does.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from types import FrameType

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from corral_runtime.api.errors import ApiError, error_response

log = logging.getLogger(__name__)

# The paths that answer while draining: the process is alive and finishing its work.
_ALIVE_PATHS = frozenset({"/healthz"})


@dataclass
class DrainState:
    """Shared by the middleware (counts requests, refuses new ones) and the server."""

    draining: bool = False
    in_flight: int = 0


class Draining:
    """Counts the requests in flight and, once draining, refuses new ones (503)."""

    def __init__(self, app: ASGIApp, state: DrainState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.state.draining and path not in _ALIVE_PATHS:
            refused = error_response(
                path,
                ApiError(
                    503,
                    "the server is shutting down; try again",
                    headers={"Retry-After": "1", "Connection": "close"},
                ),
            )
            await refused(scope, receive, send)
            return
        self.state.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.state.in_flight -= 1


def drained(state: DrainState, now: float, deadline: float) -> bool:
    """Whether a draining server may go on to shut down."""
    return state.in_flight == 0 or now >= deadline


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
