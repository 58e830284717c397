"""Serving the OpenAI API's generating endpoints: /v1/chat/completions, /v1/completions and
/v1/embeddings.

Requests become Ollama options (so a model's params layer applies as on Ollama's API) and a
started generation; answers are framed as one OpenAI object, or as chunks that ``openai.py``
sends as server-sent events ending in ``data: [DONE]``. The OpenAI API carries no keep_alive:
models stay loaded for the server's default, as Ollama does.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import JSONResponse, Response

from corral_runtime.api.errors import ApiError
from corral_runtime.api.generation import chat_prompt, check_capabilities, start_generation
from corral_runtime.api.logprobs import chat_logprobs, completion_logprobs
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
from corral_runtime.api.serving_answers import AnswerStream, whole_answer
from corral_runtime.api.serving_context import Serving
from corral_runtime.api.serving_embeddings import embed, normalized
from corral_runtime.api.streaming import sse_response
from corral_runtime.engine.types import GenerationStats
from corral_runtime.templates.messages import ToolCall

WireObject = dict[str, Any]  # a JSON object as the API sends it: a whole answer or one chunk


def _usage(stats: GenerationStats) -> dict[str, Any]:
    return usage(stats.prompt_eval_count, stats.eval_count, stats.cached_prompt_tokens)


# -- /v1/chat/completions ----------------------------------------------------------------------


async def chat_completions(body: ChatCompletionRequest, serving: Serving, *, path: str) -> Response:
    """A chat.completion, or its chunks: the reasoning as ``reasoning_content`` and the calls
    as ``tool_calls``, each step a chunk of its own."""
    tools = body.tool_list()
    messages = [m.to_chat() for m in body.messages]
    output_format = body.output_format()
    has_images = any(m.images for m in messages)
    logprobs = body.logprobs_wanted()
    think = body.think_setting()
    generation = await start_generation(
        serving.manager,
        serving.metrics,
        priority=serving.priority,
        name=body.model,
        options=body.engine_options(),
        output_format=output_format,
        keep_alive=serving.default_keep_alive,
        build_prompt=chat_prompt(messages, tools, think),
        check=lambda m: check_capabilities(
            m, think=think, images=has_images, tools=bool(tools), action="chat"
        ),
        logprobs=logprobs,
    )
    completion_id = new_id("chatcmpl")

    def taken_logprobs() -> WireObject | None:
        return chat_logprobs(generation.take_logprobs())

    if not body.stream:
        answer = await whole_answer(generation, think=think, tools=tools)
        message: WireObject = {"role": "assistant", "content": answer.content}
        if answer.tool_calls:
            # Content after the calls (rare) stays; with none, content is null as OpenAI's.
            message = {
                "role": "assistant",
                "content": answer.content or None,
                "tool_calls": wire_tool_calls(answer.tool_calls),
            }
        # Reasoning goes to reasoning_content, as OpenAI-compatible servers send it.
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
        choice = {
            "index": 0,
            "message": message,
            "logprobs": taken_logprobs(),
            "finish_reason": finish_reason(generation.stats.done_reason, bool(answer.tool_calls)),
        }
        return JSONResponse(
            chat_object(
                completion_id,
                body.model,
                choices=[choice],
                chunk=False,
                usage_record=_usage(generation.stats),
            )
        )

    def chunk(delta: WireObject, reason: str | None = None) -> WireObject:
        choice = {"index": 0, "delta": delta, "logprobs": taken_logprobs(), "finish_reason": reason}
        return chat_object(completion_id, body.model, choices=[choice], chunk=True)

    async def events() -> AsyncIterator[WireObject]:
        stream = AnswerStream(generation, think=think, tools=tools)
        yield chunk({"role": "assistant", "content": ""})
        sent = 0  # tool calls sent so far: each call goes out in the chunk that completes it

        def calls_delta(calls: list[ToolCall]) -> WireObject:
            return {"tool_calls": wire_tool_calls(calls, with_index=True, start=sent)}

        async for step in stream.steps():
            if step.thinking:
                yield chunk({"reasoning_content": step.thinking})
            if step.tool_calls:
                yield chunk(calls_delta(step.tool_calls))
                sent += len(step.tool_calls)
            if step.content:
                yield chunk({"content": step.content})
        rest = stream.ending()
        if rest.thinking:
            yield chunk({"reasoning_content": rest.thinking})
        if rest.tool_calls:
            yield chunk(calls_delta(rest.tool_calls))
            sent += len(rest.tool_calls)
        if rest.content:
            yield chunk({"content": rest.content})
        if rest.held:
            yield chunk({"content": rest.held})
        stats = generation.stats
        yield chunk({}, finish_reason(stats.done_reason, sent > 0))
        if body.include_usage:
            yield chat_object(
                completion_id, body.model, choices=[], chunk=True, usage_record=_usage(stats)
            )

    return sse_response(path, events())


# -- /v1/completions ---------------------------------------------------------------------------


async def completions(body: CompletionRequest, serving: Serving, *, path: str) -> Response:
    """A text_completion of a plain prompt (no chat template), or its chunks."""
    prompt = body.text()
    if body.echo:
        raise ApiError(400, "echo is not supported", param="echo")
    logprobs = body.logprobs_wanted()
    generation = await start_generation(
        serving.manager,
        serving.metrics,
        priority=serving.priority,
        name=body.model,
        options=body.engine_options(),
        output_format=None,
        keep_alive=serving.default_keep_alive,
        # The legacy completions API continues plain text: no chat template.
        build_prompt=lambda _model: prompt,
        check=lambda m: check_capabilities(m, think=None, images=False, tools=False),
        logprobs=logprobs,
    )
    completion_id = new_id("cmpl")
    answered = 0  # characters of text sent so far, where the next logprobs' offsets start

    def choice(text: str, reason: str | None) -> WireObject:
        nonlocal answered
        taken = completion_logprobs(generation.take_logprobs(), answered)
        answered += len(text)
        return {"index": 0, "text": text, "logprobs": taken, "finish_reason": reason}

    def finished(text: str) -> WireObject:
        return choice(text, finish_reason(generation.stats.done_reason, False))

    if not body.stream:
        text = await generation.text()
        return JSONResponse(
            completion_object(
                completion_id,
                body.model,
                choices=[finished(text)],
                usage_record=_usage(generation.stats),
            )
        )

    async def events() -> AsyncIterator[WireObject]:
        async for piece in generation.pieces():
            yield completion_object(
                completion_id, body.model, chunk=True, choices=[choice(piece, None)]
            )
        yield completion_object(completion_id, body.model, chunk=True, choices=[finished("")])
        if body.include_usage:
            yield completion_object(
                completion_id,
                body.model,
                chunk=True,
                choices=[],
                usage_record=_usage(generation.stats),
            )

    return sse_response(path, events())


# -- /v1/embeddings ----------------------------------------------------------------------------


async def embeddings(body: EmbeddingRequest, serving: Serving) -> WireObject:
    """Normalised vectors of the inputs, as floats or as base64 of little-endian float32s."""
    inputs = body.inputs()
    serving.metrics.touch()
    embedded = await embed(
        serving.manager,
        name=body.model,
        options=OllamaOptions(),
        keep_alive=serving.default_keep_alive,
        inputs=inputs,
        truncate=True,
    )
    data = []
    for i, vector in enumerate(normalized(embedded.result.vectors, body.dimensions)):
        encoded: Any = vector
        if body.encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": encoded, "index": i})
    prompt_tokens = embedded.result.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": body.model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
