"""``python -m corral_operator.gateway``: serve the gateway with uvicorn.

The server stack is chosen here, not left to uvicorn's "auto": httptools parses HTTP where it is
installed (a proxied request costs about a sixth less than with h11, and its slowest ones too:
bench/gateway.py), with a response's head and body sent in one write (``coalesce``), on
asyncio's own event loop (uvloop saved little more). Only the gateway's
server is configured so; the runtime's ``corral serve`` picks its own. (Freezing start-up's
objects out of the collector, ``gc.freeze()``, showed no gain there.)
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging

import uvicorn

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.shutdown import DrainingServer


def http_protocol(installed: bool) -> type[asyncio.Protocol] | str:
    """uvicorn's HTTP implementation for the gateway: httptools where ``installed`` (it is a
    dependency of the operator's package), writing each loop step's output in one send
    (``coalesce``), else the pure-Python h11 that uvicorn always has."""
    if not installed:
        return "h11"
    from corral_operator.gateway.coalesce import CoalescingHttpToolsProtocol

    return CoalescingHttpToolsProtocol


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = GatewaySettings()
    app = create_gateway_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        # Access lines are INFO, below that level: off, so that uvicorn does not format each
        # response's client address and path for a logger that drops them.
        access_log=False,
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
        loop="asyncio",
        http=http_protocol(importlib.util.find_spec("httptools") is not None),
    )
    # SIGTERM: drain (new requests 503, held and proxied ones finish), then shut down.
    DrainingServer(config, app.state.drain, settings.graceful_shutdown_seconds).run()


if __name__ == "__main__":
    main()
