"""Serving Ollama's generating endpoints: /api/generate, /api/chat, /api/embed and
/api/embeddings.

Each function turns a parsed request into a started generation (errors until then are still
status codes) and frames its answer: one object, or NDJSON lines of chunks ending in a ``done``
object with the final statistics. The routes in ``ollama.py`` only parse, call and return.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse, Response

from corral_runtime.api.errors import ApiError
from corral_runtime.api.generation import (
    Generation,
    ModelCheck,
    PromptBuilder,
    acquire_model,
    chat_prompt,
    check_capabilities,
    start_generation,
)
from corral_runtime.api.logprobs import token_entries
from corral_runtime.api.ollama_protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    final_fields,
    now_rfc3339,
    parse_format,
    wire_tool_calls,
)
from corral_runtime.api.options import OllamaOptions
from corral_runtime.api.serving_answers import Answer, AnswerStream, whole_answer
from corral_runtime.api.serving_context import Serving
from corral_runtime.api.serving_embeddings import Embedded, normalized
from corral_runtime.api.serving_embeddings import embed as embed_inputs
from corral_runtime.api.streaming import ndjson_response
from corral_runtime.api.thinking import ThinkValue
from corral_runtime.engine.manager import LoadedModel, ModelManager
from corral_runtime.engine.types import OutputFormat
from corral_runtime.templates.budget import TemplateBudgetError
from corral_runtime.templates.chat import GoChatTemplate, generate_messages
from corral_runtime.templates.gotemplate import TemplateError
from corral_runtime.templates.messages import ToolCall

WireObject = dict[str, Any]  # a JSON object as the API sends it: a whole answer or one chunk


@dataclass(frozen=True, slots=True)
class _Asked:
    """What /api/generate and /api/chat both read from a request, in this order, before any
    model is touched: each is a 400 of its own, whatever else the request asks."""

    name: str
    keep_alive: float
    options: OllamaOptions
    output_format: OutputFormat | None
    logprobs: int | None

    @classmethod
    def read(cls, body: GenerateRequest | ChatRequest, default_keep_alive: float) -> _Asked:
        return cls(
            name=body.require_model(),
            keep_alive=body.keep_alive_seconds(default_keep_alive),
            options=body.validated_options(),
            output_format=parse_format(body.format),
            logprobs=body.logprobs_wanted(),
        )

    async def start(
        self,
        serving: Serving,
        build_prompt: PromptBuilder,
        check: ModelCheck,
        context: tuple[int, ...] = (),
    ) -> Generation:
        """The generation asked for, with what only the endpoint knows: the prompt it renders
        and what the model must be able to do."""
        return await start_generation(
            serving.manager,
            serving.metrics,
            priority=serving.priority,
            name=self.name,
            options=self.options,
            output_format=self.output_format,
            keep_alive=self.keep_alive,
            build_prompt=build_prompt,
            check=check,
            logprobs=self.logprobs,
            context=context,
        )

    async def load_or_unload(self, manager: ModelManager, body: WireObject) -> JSONResponse:
        """An empty request loads the model (``done_reason: load``), or with keep_alive 0
        unloads it."""
        if self.keep_alive == 0:
            await manager.resolve_async(self.name)
            await manager.unload(self.name)
            reason = "unload"
        else:
            lease, _ = await acquire_model(manager, self.name, self.options, self.keep_alive)
            lease.release()
            reason = "load"
        done = {"done": True, "done_reason": reason}
        return JSONResponse({"model": self.name, "created_at": now_rfc3339(), **body, **done})


def _generate_prompt(body: GenerateRequest, think: ThinkValue) -> PromptBuilder:
    """/api/generate's prompt: as given (``raw``), else the prompt, system and suffix rendered
    by the request's own template or the model's."""

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


def _logprobs_adder(generation: Generation) -> Callable[[WireObject], WireObject]:
    """What adds to a chunk the log-probabilities of its tokens, when the request asked."""

    def with_logprobs(chunk: WireObject) -> WireObject:
        records = generation.take_logprobs()
        if records is not None:
            chunk["logprobs"] = token_entries(records)
        return chunk

    return with_logprobs


def _final_fields(generation: Generation) -> WireObject:
    return final_fields(
        generation.stats,
        total_ns=generation.total_duration_ns(),
        load_ns=generation.load_duration_ns,
    )


# -- /api/generate -----------------------------------------------------------------------------


async def generate(body: GenerateRequest, serving: Serving, *, path: str) -> Response:
    """A completion of one prompt (or, with none, a load or unload). Every field is checked
    before the model is touched, so a bad request is a 400 whatever else it asks."""
    body.check()
    asked = _Asked.read(body, serving.default_keep_alive)
    think = body.think_setting()
    if body.is_load_only:
        return await asked.load_or_unload(serving.manager, {"response": ""})
    generation = await asked.start(
        serving,
        _generate_prompt(body, think),
        lambda m: check_capabilities(m, think=think, images=bool(body.images), tools=False),
        context=tuple(body.context or ()),
    )
    with_logprobs = _logprobs_adder(generation)

    def response(answer: Answer) -> WireObject:
        fields: WireObject = {
            "model": asked.name,
            "created_at": now_rfc3339(),
            "response": answer.content,
        }
        if answer.thinking:
            fields["thinking"] = answer.thinking
        return fields

    def final() -> WireObject:
        # Ollama's (deprecated) context: the prompt's tokens and the answer's, to send back.
        return {**_final_fields(generation), "context": list(generation.stats.tokens)}

    if not body.stream:
        answer = await whole_answer(generation, think=think, tools=[])
        return JSONResponse(with_logprobs({**response(answer), **final()}))

    async def chunks() -> AsyncIterator[WireObject]:
        stream = AnswerStream(generation, think=think, tools=[])
        async for step in stream.steps():
            if step.content or step.thinking:
                yield with_logprobs({**response(step), "done": False})
        rest = stream.ending()
        yield with_logprobs({**response(Answer(rest.thinking, rest.content)), **final()})

    return ndjson_response(path, chunks())


# -- /api/chat ---------------------------------------------------------------------------------


def _message(
    content: str, calls: list[ToolCall] | None = None, thinking: str = "", *, first: int = 0
) -> WireObject:
    """An assistant message; ``first``: the index of its first call (the calls sent before)."""
    message: WireObject = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = wire_tool_calls(calls, start=first)
    return message


async def chat(body: ChatRequest, serving: Serving, *, path: str) -> Response:
    """The next assistant message of a conversation (or, with no messages, a load or unload);
    a streamed answer ends with what the reasoning splitter and the tool-call buffer held."""
    asked = _Asked.read(body, serving.default_keep_alive)
    if not body.messages:
        empty = {"message": {"role": "assistant", "content": ""}}
        return await asked.load_or_unload(serving.manager, empty)
    tools = body.tool_list()
    think = body.think_setting()
    generation = await asked.start(
        serving,
        chat_prompt(body.chat_messages(), tools, think),
        lambda m: check_capabilities(
            m, think=think, images=body.has_images, tools=bool(tools), action="chat"
        ),
    )
    with_logprobs = _logprobs_adder(generation)

    def chunk(message: WireObject) -> WireObject:
        return {"model": asked.name, "created_at": now_rfc3339(), "message": message, "done": False}

    def final(answer: Answer) -> WireObject:
        message = _message(answer.content, answer.tool_calls, answer.thinking)
        return {
            "model": asked.name,
            "created_at": now_rfc3339(),
            "message": message,
            **_final_fields(generation),
        }

    if not body.stream:
        return JSONResponse(
            with_logprobs(final(await whole_answer(generation, think=think, tools=tools)))
        )

    async def chunks() -> AsyncIterator[WireObject]:
        stream = AnswerStream(generation, think=think, tools=tools)
        sent = 0  # tool calls sent so far: each call goes out in the chunk that completes it
        async for step in stream.steps():
            if step.content or step.thinking or step.tool_calls:
                message = _message(step.content, step.tool_calls, step.thinking, first=sent)
                yield with_logprobs(chunk(message))
                sent += len(step.tool_calls)
        rest = stream.ending()
        # What the splitter held back carries no log-probabilities: they go with what follows.
        if rest.thinking:
            yield chunk(_message("", thinking=rest.thinking))
        if rest.content or rest.tool_calls:
            yield chunk(_message(rest.content, rest.tool_calls, first=sent))
        if rest.held:
            yield with_logprobs(chunk(_message(rest.held)))
        yield with_logprobs(final(Answer()))

    return ndjson_response(path, chunks())


# -- embeddings --------------------------------------------------------------------------------


async def _embedded(
    body: EmbedRequest | EmbeddingsRequest, serving: Serving, inputs: list[str], *, truncate: bool
) -> Embedded:
    """Embed in Ollama's order: keep_alive is read and the request counts as activity before
    its options are checked."""
    keep_alive = body.keep_alive_seconds(serving.default_keep_alive)
    serving.metrics.touch()
    return await embed_inputs(
        serving.manager,
        name=body.require_model(),
        options=body.validated_options(),
        keep_alive=keep_alive,
        inputs=inputs,
        truncate=truncate,
    )


async def embed(body: EmbedRequest, serving: Serving) -> WireObject:
    """Normalised vectors of the inputs, with Ollama's timings."""
    started = time.perf_counter_ns()
    embedded = await _embedded(body, serving, body.texts(), truncate=body.truncate)
    return {
        "model": body.require_model(),
        "embeddings": normalized(embedded.result.vectors, body.dimensions),
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": int(embedded.load_seconds * 1e9),
        "prompt_eval_count": embedded.result.prompt_tokens,
    }


async def embeddings(body: EmbeddingsRequest, serving: Serving) -> WireObject:
    """The legacy endpoint: one prompt, its vector as the model gives it (not normalised)."""
    inputs = [body.prompt] if body.prompt else []
    vectors = (await _embedded(body, serving, inputs, truncate=True)).result.vectors
    return {"embedding": vectors[0] if vectors else []}
