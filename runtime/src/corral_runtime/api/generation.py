"""The steps every generating endpoint shares: resolve the model, merge its parameters with the
request's options, take a lease, render the prompt, start the stream, and account for it.

The serving modules (``serving_ollama``, ``serving_openai``) say what to render and how to frame
the output; this module owns the order of things, the checks of what a model can do, and the
clean-up (a cancelled client frees its slot and its lease at once).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Literal

from corral_runtime.api.errors import ApiError
from corral_runtime.api.options import (
    OllamaOptions,
    load_options,
    merge_options,
    sampling_params,
    validate_options,
)
from corral_runtime.api.thinking import (
    ThinkingSplitter,
    ThinkValue,
    reasoning_splitter,
    wants_thinking,
)
from corral_runtime.engine.manager import Lease, LoadedModel, ModelManager
from corral_runtime.engine.priority import DEFAULT_PRIORITY
from corral_runtime.engine.types import (
    GenerationRequest,
    GenerationStats,
    OutputFormat,
    TokenLogprob,
)
from corral_runtime.engine.worker import GenerationStream
from corral_runtime.metrics import RuntimeMetrics
from corral_runtime.store.layout import PROJECTOR_LAYER, StoredModel
from corral_runtime.templates.budget import DEFAULT_BUDGET, render_off_loop
from corral_runtime.templates.chat import Capability, capabilities_of
from corral_runtime.templates.messages import ChatMessage, Tool, with_model_defaults

PromptBuilder = Callable[[LoadedModel], str]
ModelCheck = Callable[[LoadedModel], None]


def effective_options(stored: StoredModel, request_options: OllamaOptions) -> OllamaOptions:
    model_options = validate_options(stored.params, source="the model's parameters")
    return merge_options(model_options, request_options)


def check_capabilities(
    model: LoadedModel,
    *,
    think: ThinkValue,
    images: bool,
    tools: bool,
    action: Literal["generate", "chat"] = "generate",
) -> None:
    """Refuse (400) what a request asks of a model that cannot do it, before any prompt is
    rendered, in the words Ollama uses on both APIs (``action``: what the endpoint does)."""
    name = model.name
    if model.details.embedding:
        raise ApiError(400, f'"{name}" does not support {action}')
    able = capabilities_of(model.template)
    if wants_thinking(think) and Capability.THINKING not in able:
        raise ApiError(400, f'"{name}" does not support thinking')
    if images and has_vision(model):
        raise ApiError(
            400,
            f'"{name}": images are not supported yet (the model\'s vision projector is not run)',
        )
    if images:
        raise ApiError(400, f'"{name}" does not support images (the model has no vision input)')
    if tools and Capability.TOOLS not in able:
        raise ApiError(400, f"registry.ollama.ai/library/{name} does not support tools")


def has_vision(model: LoadedModel) -> bool:
    return model.stored.manifest.layer(PROJECTOR_LAYER) is not None


def chat_prompt(messages: list[ChatMessage], tools: list[Tool], think: ThinkValue) -> PromptBuilder:
    """How both chat APIs render a conversation: the model's SYSTEM and MESSAGES layers apply
    first, then its template, with the tools (if any) and the request's ``think``."""

    def build(model: LoadedModel) -> str:
        stored = model.stored
        conversation = with_model_defaults(messages, system=stored.system, stored=stored.messages)
        return model.template.render(conversation, tools=tools or None, think=think)

    return build


async def acquire_model(
    manager: ModelManager, name: str, options: OllamaOptions, keep_alive: float | None
) -> tuple[Lease, OllamaOptions]:
    """Resolve, merge the model's params under the request's options, and take a lease."""
    stored = await manager.resolve_async(name)
    unsupported = stored.manifest.unsupported_parts()
    if unsupported is not None:  # never run without them, as if they were not there
        raise ApiError(400, f'"{name}" has {unsupported}, which are not supported yet')
    merged = effective_options(stored, options)
    lease = await manager.acquire(stored, keep_alive=keep_alive, load=load_options(merged))
    return lease, merged


@dataclass(slots=True)
class Generation:
    """A started generation: iterate ``pieces()``, then read ``stats`` and the durations."""

    lease: Lease
    stream: GenerationStream
    metrics: RuntimeMetrics
    started_ns: int
    prompt: str  # as rendered
    logprobs: bool = False  # whether the request asked for them

    @property
    def model(self) -> LoadedModel:
        return self.lease.model

    @property
    def load_duration_ns(self) -> int:
        return int(self.lease.load_seconds * 1e9)

    @property
    def stats(self) -> GenerationStats:
        assert self.stream.stats is not None, "stats are known once the pieces are exhausted"
        return self.stream.stats

    def total_duration_ns(self) -> int:
        return time.perf_counter_ns() - self.started_ns

    async def pieces(self) -> AsyncIterator[str]:
        try:
            async for piece in self.stream:
                yield piece
            stats = self.stats
            self.metrics.observe_generation(
                self.model.name,
                ttft_s=stats.time_to_first_token_s,
                prompt_tokens=stats.prompt_eval_count,
                eval_count=stats.eval_count,
                eval_seconds=stats.eval_duration_ns / 1e9,
            )
        finally:
            self.stream.cancel()
            self.lease.release()

    async def text(self) -> str:
        return "".join([piece async for piece in self.pieces()])

    def take_logprobs(self) -> list[TokenLogprob] | None:
        """The log-probabilities of the tokens since the last call (None unless asked for):
        after each piece, those of its tokens; after the last, the rest."""
        return self.stream.take_logprobs() if self.logprobs else None

    def reasoning_splitter(self) -> ThinkingSplitter | None:
        """What splits this answer's reasoning out (None: its template has none)."""
        thinks = Capability.THINKING in capabilities_of(self.model.template)
        return reasoning_splitter(thinks, self.prompt)

    def close(self) -> None:
        """Give up on a generation that will not be iterated (e.g. a failed handler)."""
        self.stream.cancel()
        self.lease.release()


async def start_generation(
    manager: ModelManager,
    metrics: RuntimeMetrics,
    *,
    name: str,
    options: OllamaOptions,
    output_format: OutputFormat | None,
    keep_alive: float | None,
    build_prompt: PromptBuilder,
    check: ModelCheck | None = None,
    logprobs: int | None = None,
    context: tuple[int, ...] = (),
    priority: str = DEFAULT_PRIORITY,
) -> Generation:
    """Everything up to the first token: errors raised here still become a status code."""
    started_ns = time.perf_counter_ns()
    metrics.touch()
    lease, merged = await acquire_model(manager, name, options, keep_alive)
    try:
        model = lease.model
        if check is not None:
            check(model)
        params = replace(sampling_params(merged, output_format), logprobs=logprobs)
        if not params.stop:
            params = replace(params, stop=model.template.default_stops)
        # Off the event loop, within a budget the renderer itself enforces (a thread cannot be
        # stopped from outside): a slow template must not stall /healthz or other requests.
        prompt = await render_off_loop(DEFAULT_BUDGET, lambda: build_prompt(model))
        stream = model.worker.generate(
            GenerationRequest(prompt=prompt, params=params, context=context, priority=priority)
        )
        try:
            await stream.started()
        except BaseException:
            stream.cancel()
            raise
        metrics.observe_queue_wait(model.name, priority, stream.queue_seconds)
    except BaseException:
        lease.release()
        raise
    return Generation(lease, stream, metrics, started_ns, prompt, logprobs is not None)
