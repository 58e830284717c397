"""The answers the gateway gives itself (401, 403, 404, 503, …), in the shape of the API the
path belongs to, so that an Ollama client and an OpenAI client each read them as their own
server's errors."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse

from corral_operator.gateway.protocol import api_of_path, error_body


def error_response(
    path: str, status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An error answer for a request to ``path``."""
    return JSONResponse(
        error_body(api_of_path(path), status, message), status_code=status, headers=headers
    )
