"""``corral ps`` and ``corral stop`` against one Ollama-compatible server (a ``corral serve``,
the gateway named by ``--host``, or Ollama itself): its ``/api/ps``, and the unload request
``ollama stop`` sends (``/api/generate`` with ``keep_alive: 0`` and no prompt).

Every failure becomes one ``CommandError`` line; a model the server does not know reads as
Ollama says it.
"""

from __future__ import annotations

from typing import Any

import httpx

from corral_operator.cli.cluster import CommandError

# A server answers both at once, or the gateway holds the request briefly: never a generation.
TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=10.0)


def stop_body(model: str) -> dict[str, Any]:
    """Ollama's unload request: no prompt, ``keep_alive`` 0. A model that is not loaded is not
    loaded by it (the server answers ``done_reason: unload`` and nothing happens), as in
    Ollama."""
    return {"model": model, "keep_alive": 0, "stream": False}


def not_found(model: str) -> str:
    """``ollama stop``'s words for a model the server does not have."""
    return f'couldn\'t find model "{model}" to stop'


def running_models(http: httpx.Client) -> list[dict[str, Any]]:
    """The server's loaded models (``GET /api/ps``), as it lists them."""
    response = _send(http, "GET", "/api/ps")
    try:
        models = response.json()["models"]
    except (ValueError, KeyError, TypeError):
        raise CommandError(f"unexpected reply from {response.request.url}") from None
    if not isinstance(models, list):
        raise CommandError(f"unexpected reply from {response.request.url}")
    return [dict(m) for m in models if isinstance(m, dict)]


def stop_model(http: httpx.Client, model: str) -> None:
    """Unload ``model``: CommandError with Ollama's message when the server does not know it."""
    response = _send(http, "POST", "/api/generate", stop_body(model), missing=not_found(model))
    response.read()


def _send(
    http: httpx.Client,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    missing: str | None = None,
) -> httpx.Response:
    """One call; a 404 raises ``missing`` (when given), any other failure the server's own
    message or the transport's."""
    try:
        response = http.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {http.base_url}: {exc}") from None
    if response.status_code == 404 and missing is not None:
        raise CommandError(missing)
    if response.status_code != 200:
        raise CommandError(
            f"{response.status_code} from {response.request.url}: {_error(response)}"
        )
    return response


def _error(response: httpx.Response) -> str:
    """The ``error`` of an Ollama error body (OpenAI's nested one too), else the text."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or response.text).strip()[:500]
