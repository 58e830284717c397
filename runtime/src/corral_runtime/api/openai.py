"""The OpenAI-compatible API under /v1: chat completions, completions, embeddings, models.

Requests are converted to Ollama options (so a model's params layer applies the same way), and
answers are framed as OpenAI objects or server-sent events ending in ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from corral_runtime.api.deps import ManagerDep, MetricsDep, SettingsDep, StoreDep
from corral_runtime.api.errors import ApiError
from corral_runtime.api.generation import acquire_model, start_generation
from corral_runtime.api.logprobs import chat_logprobs, completion_logprobs
from corral_runtime.api.ollama import l2_normalize
from corral_runtime.api.ollama_protocol import check_capabilities
from corral_runtime.api.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    chat_object,
    completion_object,
    finish_reason,
    new_id,
    usage,
    wire_tool_calls,
)
from corral_runtime.api.options import OllamaOptions
from corral_runtime.api.streaming import sse_response
from corral_runtime.api.thinking import Split, split_answer
from corral_runtime.api.tool_calls import ToolCallBuffer, parse_tool_calls
from corral_runtime.engine.manager import LoadedModel
from corral_runtime.store.catalog import list_models
from corral_runtime.store.layout import StoredModel
from corral_runtime.templates.messages import with_model_defaults

router = APIRouter(prefix="/v1")


@router.post("/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    manager: ManagerDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> Response:
    request.state.model = body.model
    tools = body.tool_list()
    messages = [m.to_chat() for m in body.messages]
    output_format = body.output_format()
    has_images = any(m.images for m in messages)
    logprobs = body.logprobs_wanted()
    think = body.think_setting()

    def build(model: LoadedModel) -> str:
        # The model's SYSTEM and MESSAGES layers apply here as on /api/chat.
        stored = model.stored
        conversation = with_model_defaults(messages, system=stored.system, stored=stored.messages)
        return model.template.render(conversation, tools=tools or None, think=think)

    generation = await start_generation(
        manager,
        metrics,
        name=body.model,
        options=body.engine_options(),
        output_format=output_format,
        # The OpenAI API carries no keep_alive: the server's default, as Ollama does.
        keep_alive=settings.keep_alive_seconds,
        build_prompt=build,
        check=lambda m: check_capabilities(m, think=think, images=has_images, tools=bool(tools)),
        logprobs=logprobs,
    )
    completion_id = new_id("chatcmpl")
    # Reasoning goes to reasoning_content, as OpenAI-compatible servers send it.
    splitter = generation.reasoning_splitter()
    show_thinking = think is not False

    def taken_logprobs() -> dict[str, Any] | None:
        return chat_logprobs(generation.take_logprobs())

    names = {t.name for t in tools}

    if not body.stream:
        split = split_answer(splitter, await generation.text())
        text = split.content
        calls = (parse_tool_calls(text, names) if tools else None) or []
        stats = generation.stats
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": wire_tool_calls(calls)}
        if show_thinking and split.thinking:
            message["reasoning_content"] = split.thinking
        choice = {
            "index": 0,
            "message": message,
            "logprobs": taken_logprobs(),
            "finish_reason": finish_reason(stats.done_reason, bool(calls)),
        }
        return JSONResponse(
            chat_object(
                completion_id,
                body.model,
                choices=[choice],
                chunk=False,
                usage_record=usage(stats.prompt_eval_count, stats.eval_count),
            )
        )

    def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": taken_logprobs(), "finish_reason": reason}
        return chat_object(completion_id, body.model, choices=[choice], chunk=True)

    async def events() -> AsyncIterator[dict[str, Any]]:
        buffer = ToolCallBuffer(names) if tools else None
        yield chunk({"role": "assistant", "content": ""})
        async for piece in generation.pieces():
            split = splitter.feed(piece) if splitter is not None else Split(content=piece)
            if show_thinking and split.thinking:
                yield chunk({"reasoning_content": split.thinking})
            text = buffer.feed(split.content) if buffer is not None else split.content
            if text:
                yield chunk({"content": text})
        rest = splitter.finish() if splitter is not None else Split()
        if show_thinking and rest.thinking:
            yield chunk({"reasoning_content": rest.thinking})
        text = buffer.feed(rest.content) if buffer is not None else rest.content
        if text:
            yield chunk({"content": text})
        held, calls = buffer.finish() if buffer is not None else ("", [])
        if held:
            yield chunk({"content": held})
        if calls:
            yield chunk({"tool_calls": wire_tool_calls(calls, with_index=True)})
        stats = generation.stats
        yield chunk({}, finish_reason(stats.done_reason, bool(calls)))
        if body.include_usage:
            yield chat_object(
                completion_id,
                body.model,
                choices=[],
                chunk=True,
                usage_record=usage(stats.prompt_eval_count, stats.eval_count),
            )

    return sse_response(request.url.path, events())


@router.post("/completions")
async def completions(
    body: CompletionRequest,
    request: Request,
    manager: ManagerDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> Response:
    request.state.model = body.model
    prompt = body.text()
    if body.echo:
        raise ApiError(400, "echo is not supported", param="echo")
    logprobs = body.logprobs_wanted()
    generation = await start_generation(
        manager,
        metrics,
        name=body.model,
        options=body.engine_options(),
        output_format=None,
        # The OpenAI API carries no keep_alive: the server's default, as Ollama does.
        keep_alive=settings.keep_alive_seconds,
        # The legacy completions API continues plain text: no chat template.
        build_prompt=lambda _model: prompt,
        logprobs=logprobs,
    )
    completion_id = new_id("cmpl")
    answered = 0  # characters of text sent so far, where the next logprobs' offsets start

    def taken_logprobs(text: str) -> dict[str, Any] | None:
        nonlocal answered
        taken = completion_logprobs(generation.take_logprobs(), answered)
        answered += len(text)
        return taken

    if not body.stream:
        text = await generation.text()
        stats = generation.stats
        choice = {
            "index": 0,
            "text": text,
            "logprobs": taken_logprobs(text),
            "finish_reason": finish_reason(stats.done_reason, False),
        }
        return JSONResponse(
            completion_object(
                completion_id,
                body.model,
                choices=[choice],
                usage_record=usage(stats.prompt_eval_count, stats.eval_count),
            )
        )

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for piece in generation.pieces():
            yield completion_object(
                completion_id,
                body.model,
                chunk=True,
                choices=[
                    {
                        "index": 0,
                        "text": piece,
                        "logprobs": taken_logprobs(piece),
                        "finish_reason": None,
                    }
                ],
            )
        stats = generation.stats
        yield completion_object(
            completion_id,
            body.model,
            chunk=True,
            choices=[
                {
                    "index": 0,
                    "text": "",
                    "logprobs": taken_logprobs(""),
                    "finish_reason": finish_reason(stats.done_reason, False),
                }
            ],
        )
        if body.include_usage:
            yield completion_object(
                completion_id,
                body.model,
                chunk=True,
                choices=[],
                usage_record=usage(stats.prompt_eval_count, stats.eval_count),
            )

    return sse_response(request.url.path, events())


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest,
    request: Request,
    manager: ManagerDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    request.state.model = body.model
    inputs = body.inputs()
    metrics.touch()
    lease, _ = await acquire_model(
        manager, body.model, OllamaOptions(), settings.keep_alive_seconds
    )
    async with lease:
        result = await lease.model.worker.embed(inputs, truncate=True)
    data = []
    for i, vector in enumerate(result.vectors):
        vector = l2_normalize(vector[: body.dimensions] if body.dimensions else vector)
        encoded: Any = vector
        if body.encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": encoded, "index": i})
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }


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
