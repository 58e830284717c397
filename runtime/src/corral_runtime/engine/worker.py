"""One loaded model, owned by one dedicated thread.

Every llama.cpp call for the model (load, tokenize, decode, embed, free) runs on that thread, so
the event loop never blocks on it. Requests reach the thread through a queue; results come back
through ``loop.call_soon_threadsafe``. A bounded count of pending requests turns overload into
``QueueFullError`` (503) instead of an unbounded wait. Generation checks the stream's
cancellation flag after every token, so a client that goes away frees the model at once.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from corral_runtime.engine.stops import StopMatcher
from corral_runtime.engine.types import (
    DoneReason,
    EmbeddingResult,
    EngineError,
    GenerationRequest,
    GenerationStats,
    InvalidRequestError,
    OutputFormat,
    QueueFullError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LoadConfig:
    model_path: Path
    n_ctx: int
    n_gpu_layers: int = 0
    n_threads: int | None = None
    n_batch: int = 512
    flash_attn: bool = False


def prompt_too_long_message(n_tokens: int, n_ctx: int) -> str:
    return (
        f"the input length ({n_tokens} tokens) exceeds the context length ({n_ctx} tokens); "
        "shorten the input or raise num_ctx"
    )


@dataclass(frozen=True, slots=True)
class _Started:
    prompt_tokens: int


class GenerationStream:
    """The event-loop side of one generation: text pieces, then ``stats`` once exhausted.

    ``await stream.started()`` returns after the prompt was accepted (or raises the reason it
    was not), so a handler can still answer with an error status before it starts streaming.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.prompt_tokens = 0
        self.stats: GenerationStats | None = None

    # -- decode thread side --

    def _put(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # The loop closed: nobody is listening any more.
            self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    # -- event loop side --

    def cancel(self) -> None:
        self._cancelled.set()

    async def started(self) -> int:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, _Started)
        self.prompt_tokens = item.prompt_tokens
        return item.prompt_tokens

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if isinstance(item, str):
                yield item
            elif isinstance(item, GenerationStats):
                self.stats = item
                return
            elif isinstance(item, BaseException):
                raise item


class ModelWorker:
    """A model's llama.cpp state and the thread that owns it."""

    def __init__(self, name: str, config: LoadConfig, *, max_pending: int) -> None:
        self.name = name
        self.config = config
        self.max_pending = max_pending
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"llama:{name}", daemon=True)
        self._llm: Any = None
        self._embedder: Any = None
        self._bos_text: str | None = None
        self._grammars: dict[str, Any] = {}
        self.n_ctx = config.n_ctx
        self.load_seconds = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the thread and load the model on it."""
        self._thread.start()
        await self._call(self._load)

    async def close(self) -> None:
        """Free the model once the jobs already queued have run, then end the thread."""
        if not self._thread.is_alive():
            return
        await self._call(self._free)
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    @property
    def pending(self) -> int:
        return self._pending

    # -- requests ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Queue a generation; raises QueueFullError when the wait queue is full."""
        stream = GenerationStream(asyncio.get_running_loop())
        self._admit()
        self._jobs.put(lambda: self._run_generation(request, stream))
        return stream

    async def embed(self, texts: list[str], *, truncate: bool) -> EmbeddingResult:
        self._admit()
        try:
            return await self._call(lambda: self._embed(texts, truncate))
        finally:
            self._release()

    async def tokenize(self, text: str) -> list[int]:
        return await self._call(lambda: self._tokenize(text))

    def _admit(self) -> None:
        with self._pending_lock:
            if self._pending >= self.max_pending:
                raise QueueFullError()
            self._pending += 1

    def _release(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    async def _call(self, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.cancelled():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def job() -> None:
            try:
                result = fn()
            except Exception as exc:
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self._jobs.put(job)
        return await future

    # -- the decode thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # A job reports its own errors; this is a last resort.
                log.exception("job on %s failed", self.name)

    def _load(self) -> None:
        import llama_cpp

        started = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(self.config.model_path),
                n_ctx=self.config.n_ctx,
                n_batch=self.config.n_batch,
                n_ubatch=self.config.n_batch,
                n_gpu_layers=self.config.n_gpu_layers,
                n_threads=self.config.n_threads,
                n_threads_batch=self.config.n_threads,
                flash_attn=self.config.flash_attn,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"failed to load model {self.name}: {exc}") from exc
        self.n_ctx = int(self._llm.n_ctx())
        bos = int(self._llm.token_bos())
        if bos >= 0 and self._llm.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false":
            self._bos_text = self._llm.detokenize([bos], special=True).decode("utf-8", "replace")
        self.load_seconds = time.perf_counter() - started

    def _free(self) -> None:
        for llm in (self._llm, self._embedder):
            if llm is not None:
                llm.close()
        self._llm = self._embedder = None

    def _tokenize(self, text: str) -> list[int]:
        add_bos = self._bos_text is not None and not text.startswith(self._bos_text)
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def _grammar(self, output_format: OutputFormat | None) -> Any:
        if output_format is None:
            return None
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

        key = json.dumps(output_format.schema, sort_keys=True)
        if key not in self._grammars:
            if output_format.schema is None:
                text = JSON_GBNF
            else:
                try:
                    text = json_schema_to_gbnf(key)
                except Exception as exc:  # The converter raises bare Exceptions and others.
                    raise InvalidRequestError(f"invalid JSON schema in format: {exc}") from exc
            self._grammars[key] = text
        return LlamaGrammar.from_string(self._grammars[key], verbose=False)

    def _run_generation(self, request: GenerationRequest, stream: GenerationStream) -> None:
        try:
            if stream.cancelled:
                stream._put(_stats("cancelled", 0, 0, 0, 0))
                return
            stream._put(self._generate(request, stream))
        except (InvalidRequestError, EngineError) as exc:
            stream._put(exc)
        except Exception as exc:
            log.exception("generation on %s failed", self.name)
            stream._put(EngineError(f"generation failed: {exc}"))
        finally:
            self._release()

    def _generate(self, request: GenerationRequest, stream: GenerationStream) -> GenerationStats:
        import llama_cpp

        llm = self._llm
        params = request.params
        started = time.perf_counter()
        tokens = self._tokenize(request.prompt)
        if len(tokens) >= self.n_ctx:
            raise InvalidRequestError(prompt_too_long_message(len(tokens), self.n_ctx))
        grammar = self._grammar(params.output_format)
        stream._put(_Started(len(tokens)))

        budget = self.n_ctx - len(tokens)
        if params.num_predict >= 0:
            budget = min(budget, params.num_predict)
        if budget == 0:
            return _stats("length", len(tokens), time.perf_counter() - started, 0, 0)
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        llm.set_seed(seed)
        repeat_last_n = params.repeat_last_n
        llm.last_n_tokens_size = self.n_ctx if repeat_last_n < 0 else repeat_last_n
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(params.stop)
        vocab = llm._model.vocab
        # Evaluate the whole prompt every time: reusing a cached prefix evaluates the rest in a
        # different batch shape, which changes logits slightly and makes greedy output depend on
        # the previous request. The same request must give the same answer.
        llm.reset()
        first_token_at: float | None = None
        count = 0
        reason: DoneReason = "length"
        tokens_out = llm.generate(
            tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            typical_p=params.typical_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty,
            grammar=grammar,
        )
        try:
            for token in tokens_out:
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                if stream.cancelled:
                    reason = "cancelled"
                    break
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    reason = "stop"
                    break
                count += 1
                text = stops.feed(decoder.decode(llm.detokenize([token], special=True)))
                if text:
                    stream._put(text)
                if stops.stopped:
                    reason = "stop"
                    break
                if count >= budget:
                    break
        finally:
            tokens_out.close()
        if not stops.stopped:
            tail = stops.feed(decoder.decode(b"", final=True)) + stops.flush()
            if tail:
                stream._put(tail)
        ended = time.perf_counter()
        first = first_token_at if first_token_at is not None else ended
        return _stats(
            reason, len(tokens), first - started, count, ended - first, ttft=first - started
        )

    def _embed(self, texts: list[str], truncate: bool) -> EmbeddingResult:
        import llama_cpp

        if self._embedder is None:
            # Generative models have no pooled output of their own: a second context over the
            # same (memory-mapped) weights, with embeddings on and mean pooling, provides one.
            self._embedder = llama_cpp.Llama(
                model_path=str(self.config.model_path),
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                n_ctx=self.n_ctx,
                n_batch=self.n_ctx,
                n_ubatch=self.n_ctx,
                n_gpu_layers=self.config.n_gpu_layers,
                n_threads=self.config.n_threads,
                n_threads_batch=self.config.n_threads,
                verbose=False,
            )
        counts = [len(self._embedder.tokenize(t.encode("utf-8"), add_bos=True)) for t in texts]
        too_long = [c for c in counts if c > self.n_ctx]
        if too_long and not truncate:
            raise InvalidRequestError(prompt_too_long_message(max(too_long), self.n_ctx))
        vectors = [list(map(float, self._embedder.embed(t, truncate=True))) for t in texts]
        return EmbeddingResult(
            vectors=vectors, prompt_tokens=sum(min(c, self.n_ctx) for c in counts)
        )


def _stats(
    reason: DoneReason,
    prompt_tokens: int,
    prompt_s: float,
    count: int,
    eval_s: float,
    *,
    ttft: float | None = None,
) -> GenerationStats:
    return GenerationStats(
        done_reason=reason,
        prompt_eval_count=prompt_tokens,
        prompt_eval_duration_ns=int(prompt_s * 1e9),
        eval_count=count,
        eval_duration_ns=int(eval_s * 1e9),
        time_to_first_token_s=ttft,
    )
