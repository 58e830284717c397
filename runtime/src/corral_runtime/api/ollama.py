"""Ollama's native API: generate, chat, embed, and the model listings.

Routes are thin: the wire models parse the request, ``serving_ollama`` serves it (starts the
generation, frames the answer as NDJSON or one object), and the route returns what it framed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from corral_runtime import __version__
from corral_runtime.api import info, serving_ollama
from corral_runtime.api.deps import ManagerDep, StoreDep
from corral_runtime.api.ollama_protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ModelRequest,
)
from corral_runtime.api.serving_context import ServingDep
from corral_runtime.store.catalog import list_models

router = APIRouter()


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running"


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


# -- generation and embeddings ------------------------------------------------------------------


@router.post("/api/generate")
async def generate(body: GenerateRequest, request: Request, serving: ServingDep) -> Response:
    request.state.model = body.require_model()
    return await serving_ollama.generate(body, serving, path=request.url.path)


@router.post("/api/chat")
async def chat(body: ChatRequest, request: Request, serving: ServingDep) -> Response:
    request.state.model = body.require_model()
    return await serving_ollama.chat(body, serving, path=request.url.path)


@router.post("/api/embed")
async def embed(body: EmbedRequest, request: Request, serving: ServingDep) -> dict[str, Any]:
    request.state.model = body.require_model()
    return await serving_ollama.embed(body, serving)


@router.post("/api/embeddings")
async def embeddings(
    body: EmbeddingsRequest, request: Request, serving: ServingDep
) -> dict[str, Any]:
    request.state.model = body.require_model()
    return await serving_ollama.embeddings(body, serving)


# -- listings ----------------------------------------------------------------------------------


@router.get("/api/tags")
async def tags(store: StoreDep) -> dict[str, Any]:
    entries = await asyncio.to_thread(list_models, store)
    return {"models": [entry.to_tags_json() for entry in entries]}


@router.post("/api/show")
async def show(body: ModelRequest, manager: ManagerDep) -> dict[str, Any]:
    stored = await manager.resolve_async(body.require_model())
    return await asyncio.to_thread(info.show_entry, stored, verbose=body.verbose)


@router.get("/api/ps")
async def ps(manager: ManagerDep) -> dict[str, Any]:
    return {"models": [info.ps_entry(m) for m in manager.loaded()]}
