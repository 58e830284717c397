"""The OpenAI-compatible API under /v1: chat completions, completions, embeddings, models.

Routes are thin: the wire models parse the request, ``serving_openai`` serves it (converts it
to Ollama options, starts the generation, frames the answer as an OpenAI object or server-sent
events ending in ``data: [DONE]``), and the route returns what it framed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from corral_runtime.api import serving_openai
from corral_runtime.api.deps import ManagerDep, StoreDep
from corral_runtime.api.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from corral_runtime.api.serving_context import ServingDep
from corral_runtime.store.catalog import list_models
from corral_runtime.store.layout import StoredModel

router = APIRouter(prefix="/v1")


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, request: Request, serving: ServingDep
) -> Response:
    request.state.model = body.model
    return await serving_openai.chat_completions(body, serving, path=request.url.path)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request, serving: ServingDep) -> Response:
    request.state.model = body.model
    return await serving_openai.completions(body, serving, path=request.url.path)


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest, request: Request, serving: ServingDep
) -> dict[str, Any]:
    request.state.model = body.model
    return await serving_openai.embeddings(body, serving)


def _model_object(stored: StoredModel) -> dict[str, Any]:
    return {
        "id": stored.name.display,
        "object": "model",
        "created": int(stored.modified),
        "owned_by": stored.name.namespace,
    }


@router.get("/models")
async def list_stored_models(store: StoreDep) -> dict[str, Any]:
    entries = await asyncio.to_thread(list_models, store)
    return {"object": "list", "data": [_model_object(entry.stored) for entry in entries]}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, manager: ManagerDep) -> dict[str, Any]:
    return _model_object(await manager.resolve_async(model_id))
