"""Framing for streamed answers: NDJSON lines for Ollama, server-sent events for OpenAI.

An error after the stream has started cannot change the status code any more; it is sent as one
more event in the API's error shape, as Ollama and OpenAI do.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from corral_runtime.api.errors import as_api_error, error_body

NDJSON = "application/x-ndjson"


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


async def _ndjson(path: str, objects: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    try:
        async for obj in objects:
            yield _dumps(obj) + "\n"
    except Exception as exc:
        yield _dumps(error_body(path, as_api_error(exc))) + "\n"


async def _sse(path: str, objects: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
    try:
        async for obj in objects:
            yield f"data: {_dumps(obj)}\n\n"
    except Exception as exc:
        yield f"data: {_dumps(error_body(path, as_api_error(exc)))}\n\n"
    yield "data: [DONE]\n\n"


def ndjson_response(path: str, objects: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    return StreamingResponse(_ndjson(path, objects), media_type=NDJSON)


def sse_response(path: str, objects: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    return StreamingResponse(
        _sse(path, objects),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
