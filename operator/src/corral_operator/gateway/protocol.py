"""Wire facts of the two APIs the gateway fronts: which paths carry a ``model`` to route by,
whether a request streams, and the bytes of errors and keep-alive heartbeats in each API's own
shape (Ollama: ``{"error": …}`` and NDJSON; OpenAI: ``{"error": {message, type, …}}`` and SSE).

Everything here is pure: bytes in, bytes out, no I/O.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from corral_operator.durations import keep_alive_seconds
from corral_operator.gateway.affinity import request_text


class Api(StrEnum):
    OLLAMA = "ollama"
    OPENAI = "openai"


class Kind(StrEnum):
    CHAT = "chat"
    GENERATE = "generate"
    EMBED = "embed"
    SHOW = "show"


@dataclass(frozen=True, slots=True)
class Route:
    """A routed endpoint: its API, what it does, and whether it streams when not told."""

    api: Api
    kind: Kind
    streams_by_default: bool


ROUTED: Mapping[str, Route] = {
    "/api/generate": Route(Api.OLLAMA, Kind.GENERATE, True),
    "/api/chat": Route(Api.OLLAMA, Kind.CHAT, True),
    "/api/embed": Route(Api.OLLAMA, Kind.EMBED, False),
    "/api/embeddings": Route(Api.OLLAMA, Kind.EMBED, False),
    "/api/show": Route(Api.OLLAMA, Kind.SHOW, False),
    "/v1/chat/completions": Route(Api.OPENAI, Kind.CHAT, False),
    "/v1/completions": Route(Api.OPENAI, Kind.GENERATE, False),
    "/v1/embeddings": Route(Api.OPENAI, Kind.EMBED, False),
}


def is_routed(method: str, path: str) -> bool:
    """Whether a request goes to a pod by its ``model``: a POST to one of the ``ROUTED`` paths."""
    return method == "POST" and path in ROUTED


def api_of_path(path: str) -> Api:
    """Errors on any path take the shape of the API the path belongs to."""
    return Api.OPENAI if path.startswith("/v1/") else Api.OLLAMA


class BadRequestError(ValueError):
    """The body cannot be routed (not JSON, or no model); answered with a 400."""


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the gateway needs from a body; the body itself is forwarded untouched."""

    model: str
    stream: bool
    keep_alive: Any = None
    """Ollama's ``keep_alive`` as sent (number, duration string, or None)."""
    unload: bool = False
    """Ollama's unload request (``ollama stop``): keep_alive 0 and nothing to generate."""
    text: str = ""
    """The text the prompt is rendered from (``affinity.request_text``), for the cache-aware
    choice of a pod; empty for requests with nothing to reuse."""


def request_facts(route: Route, body: bytes) -> RequestFacts:
    """The model, streaming mode and keep_alive of a request to ``route``."""
    try:
        data = json.loads(body) if body.strip() else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequestError(f"invalid JSON body: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object")
    model = data.get("model")
    if not model and route.api is Api.OLLAMA:
        # Older Ollama clients send ``name`` to /api/show.
        model = data.get("name")
    if not isinstance(model, str) or not model.strip():
        raise BadRequestError("model is required")
    stream = data.get("stream")
    streaming = route.streams_by_default if stream is None else bool(stream)
    if route.kind in (Kind.EMBED, Kind.SHOW):
        streaming = False
    keep_alive = data.get("keep_alive") if route.api is Api.OLLAMA else None
    return RequestFacts(
        model=model.strip(),
        stream=streaming,
        keep_alive=keep_alive,
        unload=is_unload(route, data),
        text=request_text(data) if route.kind in (Kind.CHAT, Kind.GENERATE) else "",
    )


def is_unload(route: Route, data: Mapping[str, Any]) -> bool:
    """Whether a body is Ollama's unload request: ``keep_alive`` 0 on /api/generate with no
    prompt (nor suffix or images) or on /api/chat with no messages, as the runtime reads it.
    With anything to generate, a keep_alive 0 unloads only after answering."""
    if route.api is not Api.OLLAMA or route.kind not in (Kind.GENERATE, Kind.CHAT):
        return False
    if keep_alive_seconds(data.get("keep_alive")) != 0:
        return False
    if route.kind is Kind.CHAT:
        return not data.get("messages")
    return not (data.get("prompt") or data.get("suffix") or data.get("images"))


def unload_answer(route: Route, model: str, now: datetime) -> dict[str, Any]:
    """The runtime's answer to an unload, in Ollama's shape (``done_reason: unload``), for the
    gateway to give itself where no pod has anything loaded."""
    answer: dict[str, Any] = {"model": model, "created_at": _ollama_time(now)}
    if route.kind is Kind.CHAT:
        answer["message"] = {"role": "assistant", "content": ""}
    else:
        answer["response"] = ""
    return {**answer, "done": True, "done_reason": "unload"}


_DEFAULT_HOST = "registry.ollama.ai/"
_DEFAULT_NAMESPACE = "library/"


@functools.lru_cache(maxsize=1024)
def normalize_model_name(name: str) -> str:
    """The lookup key of a model name: lower case, default host/namespace dropped, tag added.

    ``Gemma3:270M``, ``library/gemma3:270m`` and ``registry.ollama.ai/library/gemma3:270m`` are
    one model; ``gemma3`` means ``gemma3:latest``. Remembered per spelling: a proxied
    request looks its model up four times (routing, activity, prefix hashes, metrics).
    """
    key = name.strip().lower()
    key = key.removeprefix(_DEFAULT_HOST).removeprefix(_DEFAULT_NAMESPACE)
    last = key.rsplit("/", 1)[-1]
    if ":" not in last:
        key += ":latest"
    return key


# -- errors ----------------------------------------------------------------------------------

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
}


def error_body(api: Api, status: int, message: str) -> dict[str, Any]:
    """A non-streamed error in the API's own shape."""
    if api is Api.OLLAMA:
        return {"error": message}
    code = "model_not_found" if status == 404 else None
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "api_error"),
            "param": None,
            "code": code,
        }
    }


def model_not_found(api: Api, model: str) -> dict[str, Any]:
    if api is Api.OPENAI:
        return error_body(api, 404, f"The model '{model}' does not exist")
    return error_body(api, 404, f"model '{model}' not found")


def stream_media_type(api: Api) -> str:
    return "text/event-stream" if api is Api.OPENAI else "application/x-ndjson"


def inband_error(api: Api, message: str) -> bytes:
    """An error after a stream has started (status 200 already sent): one more NDJSON line, or
    an SSE event carrying an OpenAI error object."""
    if api is Api.OLLAMA:
        return json.dumps({"error": message}).encode() + b"\n"
    return b"data: " + json.dumps(error_body(api, 503, message)).encode() + b"\n\n"


def heartbeat(route: Route, model: str, now: datetime) -> bytes:
    """Output that keeps a held stream alive and that every client of the API ignores: an SSE
    comment, or an NDJSON chunk with empty content and ``done: false``."""
    if route.api is Api.OPENAI:
        return b": keep-alive\n\n"
    chunk: dict[str, Any] = {"model": model, "created_at": _ollama_time(now)}
    if route.kind is Kind.CHAT:
        chunk["message"] = {"role": "assistant", "content": ""}
    else:
        chunk["response"] = ""
    chunk["done"] = False
    return json.dumps(chunk).encode() + b"\n"


def _ollama_time(now: datetime) -> str:
    return now.isoformat().replace("+00:00", "Z")
