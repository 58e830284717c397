"""Ollama's native API: generate, chat, embed, and the model listings.

Handlers are thin: parse (the wire models validate), start the generation (errors here are
still status codes), then frame the pieces as NDJSON or one object.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from corral_runtime import __version__
from corral_runtime.api import info
from corral_runtime.api.deps import ManagerDep, MetricsDep, SettingsDep, StoreDep
from corral_runtime.api.errors import ApiError
from corral_runtime.api.generation import Generation, acquire_model, start_generation
from corral_runtime.api.logprobs import token_entries
from corral_runtime.api.ollama_protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    ModelRequest,
    check_capabilities,
    final_fields,
    now_rfc3339,
    parse_format,
    wire_tool_calls,
)
from corral_runtime.api.options import OllamaOptions
from corral_runtime.api.streaming import ndjson_response
from corral_runtime.api.thinking import Split, ThinkValue, split_answer
from corral_runtime.api.tool_calls import ToolCallBuffer, parse_tool_calls
from corral_runtime.engine.manager import LoadedModel, ModelManager
from corral_runtime.store.catalog import list_models
from corral_runtime.templates.budget import TemplateBudgetError
from corral_runtime.templates.chat import GoChatTemplate, generate_messages
from corral_runtime.templates.gotemplate import TemplateError
from corral_runtime.templates.messages import with_model_defaults

router = APIRouter()


@router.get("/", response_class=PlainTextResponse)
@router.head("/", response_class=PlainTextResponse)
async def root() -> str:
    return "Ollama is running"


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


# -- generation --------------------------------------------------------------------------------


async def _load_or_unload(
    manager: ModelManager,
    name: str,
    keep_alive: float,
    options: OllamaOptions,
    body: dict[str, Any],
) -> dict[str, Any]:
    """An empty request loads the model (``done_reason: load``), or with keep_alive 0 unloads it."""
    if keep_alive == 0:
        await manager.resolve_async(name)
        await manager.unload(name)
        reason = "unload"
    else:
        lease, _ = await acquire_model(manager, name, options, keep_alive)
        lease.release()
        reason = "load"
    return {"model": name, "created_at": now_rfc3339(), **body, "done": True, "done_reason": reason}


def _generate_prompt(body: GenerateRequest, think: ThinkValue) -> Any:
    def build(model: LoadedModel) -> str:
        if body.raw:
            return body.prompt
        system = body.system if body.system is not None else model.stored.system
        messages = generate_messages(body.prompt, system)
        if not body.template:
            return model.template.render(messages, suffix=body.suffix, think=think)
        try:
            own = GoChatTemplate(body.template, label="the request's template")
            return own.render(messages, suffix=body.suffix, think=think)
        except TemplateBudgetError:
            raise
        except TemplateError as exc:  # the client's template, not the model's: a 400
            raise ApiError(400, f"invalid template: {exc}", param="template") from exc

    return build


def _with_logprobs(chunk: dict[str, Any], generation: Generation) -> dict[str, Any]:
    """A chunk with the log-probabilities of its tokens, when the request asked for them."""
    records = generation.take_logprobs()
    if records is not None:
        chunk["logprobs"] = token_entries(records)
    return chunk


@router.post("/api/generate")
async def generate(
    body: GenerateRequest,
    request: Request,
    manager: ManagerDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> Response:
    name = request.state.model = body.require_model()
    body.check()
    keep_alive = body.keep_alive_seconds(settings.keep_alive_seconds)
    options = body.validated_options()
    output_format = parse_format(body.format)
    logprobs = body.logprobs_wanted()
    think = body.think_setting()
    if body.is_load_only:
        return JSONResponse(
            await _load_or_unload(manager, name, keep_alive, options, {"response": ""})
        )
    generation = await start_generation(
        manager,
        metrics,
        name=name,
        options=options,
        output_format=output_format,
        keep_alive=keep_alive,
        build_prompt=_generate_prompt(body, think),
        check=lambda m: check_capabilities(m, think=think, images=bool(body.images), tools=False),
        logprobs=logprobs,
        context=tuple(body.context or ()),
    )

    def final(g: Generation) -> dict[str, Any]:
        fields = final_fields(g.stats, total_ns=g.total_duration_ns(), load_ns=g.load_duration_ns)
        # Ollama's (deprecated) context: the prompt's tokens and the answer's, to send back.
        return {**fields, "context": list(g.stats.tokens)}

    def with_logprobs(chunk: dict[str, Any]) -> dict[str, Any]:
        return _with_logprobs(chunk, generation)

    splitter = generation.reasoning_splitter()
    show_thinking = think is not False

    def answer(split: Split) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": name, "created_at": now_rfc3339()}
        fields["response"] = split.content
        if show_thinking and split.thinking:
            fields["thinking"] = split.thinking
        return fields

    if not body.stream:
        split = split_answer(splitter, await generation.text())
        return JSONResponse(with_logprobs({**answer(split), **final(generation)}))

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        async for piece in generation.pieces():
            split = splitter.feed(piece) if splitter is not None else Split(content=piece)
            if split.content or (show_thinking and split.thinking):
                yield with_logprobs({**answer(split), "done": False})
        rest = splitter.finish() if splitter is not None else Split()
        yield with_logprobs({**answer(rest), **final(generation)})

    return ndjson_response(request.url.path, chunks())


@router.post("/api/chat")
async def chat(
    body: ChatRequest,
    request: Request,
    manager: ManagerDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> Response:
    name = request.state.model = body.require_model()
    keep_alive = body.keep_alive_seconds(settings.keep_alive_seconds)
    options = body.validated_options()
    output_format = parse_format(body.format)
    logprobs = body.logprobs_wanted()
    if not body.messages:
        return JSONResponse(
            await _load_or_unload(
                manager,
                name,
                keep_alive,
                options,
                {"message": {"role": "assistant", "content": ""}},
            )
        )
    tools = body.tool_list()
    think = body.think_setting()

    def build(model: LoadedModel) -> str:
        stored = model.stored
        messages = with_model_defaults(
            body.chat_messages(), system=stored.system, stored=stored.messages
        )
        return model.template.render(messages, tools=tools or None, think=think)

    generation = await start_generation(
        manager,
        metrics,
        name=name,
        options=options,
        output_format=output_format,
        keep_alive=keep_alive,
        build_prompt=build,
        check=lambda m: check_capabilities(
            m, think=think, images=body.has_images, tools=bool(tools)
        ),
        logprobs=logprobs,
    )
    names = {t.name for t in tools}

    def with_logprobs(chunk: dict[str, Any]) -> dict[str, Any]:
        return _with_logprobs(chunk, generation)

    splitter = generation.reasoning_splitter()
    show_thinking = think is not False

    def message(content: str, calls: list[Any] | None = None, thinking: str = "") -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if show_thinking and thinking:
            msg["thinking"] = thinking
        if calls:
            msg["tool_calls"] = wire_tool_calls(calls)
        return msg

    def final(g: Generation, content: str, calls: list[Any], thinking: str = "") -> dict[str, Any]:
        return {
            "model": name,
            "created_at": now_rfc3339(),
            "message": message(content, calls, thinking),
            **final_fields(g.stats, total_ns=g.total_duration_ns(), load_ns=g.load_duration_ns),
        }

    if not body.stream:
        split = split_answer(splitter, await generation.text())
        text = split.content
        calls = (parse_tool_calls(text, names) if tools else None) or []
        return JSONResponse(
            with_logprobs(final(generation, "" if calls else text, calls, split.thinking))
        )

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        buffer = ToolCallBuffer(names) if tools else None
        async for piece in generation.pieces():
            split = splitter.feed(piece) if splitter is not None else Split(content=piece)
            text = buffer.feed(split.content) if buffer is not None else split.content
            if text or (show_thinking and split.thinking):
                yield with_logprobs(
                    {
                        "model": name,
                        "created_at": now_rfc3339(),
                        "message": message(text, thinking=split.thinking),
                        "done": False,
                    }
                )
        rest = splitter.finish() if splitter is not None else Split()
        if rest.thinking and show_thinking:
            yield {
                "model": name,
                "created_at": now_rfc3339(),
                "message": message("", thinking=rest.thinking),
                "done": False,
            }
        if rest.content and buffer is not None:
            rest = Split(content=buffer.feed(rest.content))
        if rest.content:
            yield {
                "model": name,
                "created_at": now_rfc3339(),
                "message": message(rest.content),
                "done": False,
            }
        held, calls = buffer.finish() if buffer is not None else ("", [])
        if held or calls:
            yield with_logprobs(
                {
                    "model": name,
                    "created_at": now_rfc3339(),
                    "message": message(held, calls),
                    "done": False,
                }
            )
        yield with_logprobs(final(generation, "", []))

    return ndjson_response(request.url.path, chunks())


# -- embeddings --------------------------------------------------------------------------------


def l2_normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


@router.post("/api/embed")
async def embed(
    body: EmbedRequest,
    request: Request,
    manager: ManagerDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    started = time.perf_counter_ns()
    name = request.state.model = body.require_model()
    keep_alive = body.keep_alive_seconds(settings.keep_alive_seconds)
    metrics.touch()
    lease, _ = await acquire_model(manager, name, body.validated_options(), keep_alive)
    async with lease:
        texts = body.texts()
        result = await lease.model.worker.embed(texts, truncate=body.truncate) if texts else None
    vectors = result.vectors if result else []
    if body.dimensions:
        vectors = [v[: body.dimensions] for v in vectors]
    return {
        "model": name,
        "embeddings": [l2_normalize(v) for v in vectors],
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": int(lease.load_seconds * 1e9),
        "prompt_eval_count": result.prompt_tokens if result else 0,
    }


@router.post("/api/embeddings")
async def embeddings(
    body: EmbeddingsRequest,
    request: Request,
    manager: ManagerDep,
    metrics: MetricsDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    name = request.state.model = body.require_model()
    keep_alive = body.keep_alive_seconds(settings.keep_alive_seconds)
    metrics.touch()
    lease, _ = await acquire_model(manager, name, body.validated_options(), keep_alive)
    async with lease:
        if not body.prompt:
            return {"embedding": []}
        result = await lease.model.worker.embed([body.prompt], truncate=True)
    return {"embedding": result.vectors[0]}


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
