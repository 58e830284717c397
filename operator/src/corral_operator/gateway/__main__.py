"""``python -m corral_operator.gateway``: serve the gateway with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.shutdown import DrainingServer


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = GatewaySettings()
    app = create_gateway_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=settings.graceful_shutdown_seconds,
    )
    # SIGTERM: drain (new requests 503, held and proxied ones finish), then shut down.
    DrainingServer(config, app.state.drain, settings.graceful_shutdown_seconds).run()


if __name__ == "__main__":
    main()
