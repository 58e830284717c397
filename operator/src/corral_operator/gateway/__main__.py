"""``python -m corral_operator.gateway``: serve the gateway with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from corral_operator.gateway.app import create_gateway_app
from corral_operator.gateway.settings import GatewaySettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = GatewaySettings()
    uvicorn.run(
        create_gateway_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=30,
    )


if __name__ == "__main__":
    main()
