"""One loaded model, owned by one decode thread that batches every running request.

Every llama.cpp call for the model (load, tokenize, decode, sample, embed, free) runs on that
thread, so the event loop never blocks on it. The thread runs a continuous-batching loop over
``parallel`` slots (and the reserved ones on top, which only interactive requests take): each
step puts one token of every decoding sequence into a single ``llama_decode`` (beyond the
shared slots' number, a batch sequence gives its turn to a reserved slot's:
``priority.paused_rows``), samples each with its own sampler chain (or takes the arg-max for
plain greedy), then evaluates the chunks of waiting prompts that fit in ``n_batch`` prompt
tokens, each prompt's whole chunks in one decode apart from other sequences, and the short last
pieces of several prompts in one, so several new requests start at once without changing
anyone's logits (``scheduling.plan_prefill``, ``scheduling.shared_prefill``). New requests take
a free slot at the next step (reusing the longest cached prompt prefix among the free slots);
the others wait in a bounded queue, from which a free slot takes the request that
``priority.next_admitted`` names (class, aging, share caps; with reserved slots, a decode of
lower classes in flight when an interactive request arrives stops and is done again after its
prompt: ``_run_decode``), and beyond it ``generate`` raises ``QueueFullError`` (503). A
request that waits longer than the queue timeout fails with ``QueueTimeoutError`` (also 503);
one that generates longer than the generation timeout ends
with ``GenerationTimeoutError`` and frees its slot. A cancelled stream (its client went away)
leaves its slot at the next step. A slot whose turn has finished evaluates the turn's answer
again as prompt chunks while idle, one chunk a step and only while no prompt waits (``_warm``),
so the conversation's next turn reuses it.

Requests reach the thread through an inbox; results come back through
``loop.call_soon_threadsafe``. The scheduling rules themselves are pure functions in
``scheduling.py``.

A failed step fails the sequences in it and the thread goes on. Should the thread itself die
(an exception outside a step: a bug, or the test seam ``inject_fault``), it first fails every
request it holds (in slots, waiting, or still in its inbox) with ``EngineFailedError``, frees
the model, sets ``failure`` (so nothing new is queued: ``generate`` and the jobs raise it at
once) and tells its owner through ``on_failure``; the manager then reloads the model.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from corral_runtime.engine.llama import (
    ContextConfig,
    DecodeInterrupt,
    LlamaBatchContext,
    LoadAbort,
    Row,
    utf8,
)
from corral_runtime.engine.priority import (
    DecodingView,
    PriorityPolicy,
    QueuedView,
    interruptible,
    may_take_reserved,
    next_admitted,
    paused_rows,
    prefill_first,
    prefill_order,
    total_slots,
)
from corral_runtime.engine.sampling import (
    GrammarCache,
    build_chain,
    free_chain,
    plain_greedy,
    token_logprobs,
)
from corral_runtime.engine.scheduling import (
    LONE_ROW_TOKENS,
    PREFILL_CHUNK,
    SlotView,
    StepCosts,
    WarmView,
    batch_capacity,
    choose_slot,
    decode_runs,
    default_parallel,
    done_reason,
    evaluated_prefix,
    gap_fillers,
    generation_budget,
    lone_partners,
    next_warm_chunk,
    plan_prefill,
    reusable_prefix,
    run_keeping_target,
    shared_prefill,
    shared_source,
    warm_start,
)
from corral_runtime.engine.stops import StopMatcher
from corral_runtime.engine.types import (
    DoneReason,
    EmbeddingResult,
    EngineError,
    EngineFailedError,
    GenerationRequest,
    GenerationStats,
    GenerationTimeoutError,
    InvalidRequestError,
    QueueFullError,
    QueueTimeoutError,
    TokenChoice,
    TokenLogprob,
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
    flash_attn: bool | None = None  # None: see ``llama.flash_attention_for``
    kv_cache_type: str = "f16"  # see ``llama.ContextConfig``
    batch_invariant: bool = True  # see ``llama.ContextConfig``
    warm_turns: bool = True  # an idle slot warms its finished turn (``ModelWorker._warm``)
    tensor_split: tuple[float, ...] = ()  # see ``llama.ContextConfig``
    parallel: int | None = None  # None: ``default_parallel(n_ctx)``
    queue_timeout_s: float | None = None  # None: wait as long as it takes
    generation_timeout_s: float | None = None  # from taking a slot; None: no limit
    priority: PriorityPolicy = field(default_factory=PriorityPolicy)  # who waits less
    abort: LoadAbort | None = field(default=None, compare=False)  # the load's switch to stop


def prompt_too_long_message(n_tokens: int | None, n_ctx: int) -> str:
    length = f"{n_tokens} tokens" if n_tokens is not None else f"over {n_ctx} tokens"
    return (
        f"the input length ({length}) exceeds the context length ({n_ctx} tokens); "
        "shorten the input or raise num_ctx"
    )


@dataclass(frozen=True, slots=True)
class _Started:
    prompt_tokens: int
    queue_seconds: float  # from submission to taking a slot


@dataclass(frozen=True, slots=True)
class _Job:
    """Work for the decode thread, and how to tell its caller should it never run."""

    run: Callable[[], None]
    fail: Callable[[BaseException], None]


@dataclass(frozen=True, slots=True)
class _Fault:
    """An error for the decode thread to raise between steps (``inject_fault``)."""

    error: BaseException


class GenerationStream:
    """The event-loop side of one generation: text pieces, then ``stats`` once exhausted.

    ``await stream.started()`` returns once the request holds a slot (or raises the reason it
    never will), so a handler can still answer with an error status before it starts streaming.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._cancelled = threading.Event()
        self.prompt_tokens = 0
        self.queue_seconds = 0.0
        self.stats: GenerationStats | None = None
        self._logprobs: list[TokenLogprob] = []

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
        self.queue_seconds = item.queue_seconds
        return item.prompt_tokens

    def take_logprobs(self) -> list[TokenLogprob]:
        """The log-probabilities of the tokens received since the last call (those of a
        piece's tokens arrive before it)."""
        taken, self._logprobs = self._logprobs, []
        return taken

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if isinstance(item, str):
                yield item
            elif isinstance(item, TokenLogprob):
                self._logprobs.append(item)
            elif isinstance(item, GenerationStats):
                self.stats = item
                return
            elif isinstance(item, BaseException):
                raise item


@dataclass(slots=True)
class _Submission:
    request: GenerationRequest
    stream: GenerationStream
    submitted_at: float  # time.perf_counter()


@dataclass(slots=True)
class _Waiting:
    submission: _Submission
    tokens: list[int]


@dataclass(slots=True)
class _Sequence:
    """A request holding a slot: its prompt, its progress and its output state."""

    submission: _Submission
    tokens: list[int]
    sampler: Any  # None: plain greedy, the arg-max of the logits
    budget: int
    n_fed: int  # prompt tokens whose KV is in memory
    reused: int  # of those, taken from the slot's cache
    assigned_at: float
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    next_token: int | None = None  # sampled, to be fed at the next step
    count: int = 0
    generated: list[int] = field(default_factory=list)
    logprob: TokenLogprob | None = None  # of the token just sampled, when asked for
    first_token_at: float | None = None
    paused_steps: int = 0  # consecutive steps left out of the decode (``priority.paused_rows``)

    @property
    def stream(self) -> GenerationStream:
        return self.submission.stream

    @property
    def prefilling(self) -> bool:
        return self.n_fed < len(self.tokens)


@dataclass(slots=True)
class _Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV is in this slot's memory
    evaluated: int = 0  # leading cached tokens evaluated as whole prompt chunks
    last_used: float = -math.inf
    sequence: _Sequence | None = None
    # The last finished turn's tokens (prompt and answer), whose whole chunks past ``evaluated``
    # the idle slot evaluates again as prompt chunks (``_warm``); empty once the slot is taken.
    turn: list[int] = field(default_factory=list)


class ModelWorker:
    """A model's llama.cpp state and the thread that owns it."""

    def __init__(
        self,
        name: str,
        config: LoadConfig,
        *,
        max_pending: int,
        on_failure: Callable[[ModelWorker], None] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.max_pending = max_pending
        self.parallel = config.parallel or default_parallel(config.n_ctx)  # shared slots
        # The shared slots and the reserved ones on top (``priority.total_slots``).
        self.slot_count = total_slots(self.parallel, config.priority)
        self._chunk = max(1, min(config.n_batch, PREFILL_CHUNK))
        # Most prompt tokens of one sequence in one decode (``scheduling.plan_prefill``).
        self._span = max(self._chunk, config.n_batch)
        self._inbox: queue.SimpleQueue[_Job | _Submission | _Fault | None] = queue.SimpleQueue()
        # Held while queueing and while the thread marks itself failed, so nothing is queued
        # after the thread has emptied its inbox for the last time.
        self._gate = threading.Lock()
        self.failure: EngineFailedError | None = None
        self._on_failure = on_failure
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._pending_lock = threading.Lock()
        # Requests admitted that do not hold a slot yet, per priority class (for /metrics).
        self._queued_by_class: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._run, name=f"llama:{name}", daemon=True)
        self._context: LlamaBatchContext | None = None
        self._embedder: Any = None
        self._grammars = GrammarCache()
        self._slots: list[_Slot] = []
        self._waiting: deque[_Waiting] = deque()
        self._busy = 0
        # Stops a lower class's decode in flight when a request of the highest class arrives
        # (``_run_decode``); whether the last decode was stopped so.
        self._interrupt = DecodeInterrupt()
        self._interrupted = False
        # An idle slot's warm chunk is under way (``_warm``): any request that arrives stops it.
        self._warming = False
        self.n_ctx = config.n_ctx
        self.load_seconds = 0.0
        # Decode steps, and llama.cpp computations they took (``scheduling.decode_runs``); for
        # /metrics, written by the decode thread only.
        self.decode_steps = 0
        self.decode_computations = 0
        # What one-computation decode steps took (``scheduling.StepCosts``), for filling gaps
        # between runs of decoding sequence ids (``_fillers``).
        self._step_costs = StepCosts()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the thread and load the model on it."""
        self._loop = asyncio.get_running_loop()
        self._thread.start()
        await self._call(self._load)

    async def close(self) -> None:
        """Free the model once the jobs already queued have run, then end the thread (a thread
        that died has freed the model already)."""
        if not self._thread.is_alive():
            return
        if self.failure is None:
            with contextlib.suppress(EngineFailedError):
                await self._call(self._free)
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)

    @property
    def failed(self) -> bool:
        """Whether the decode thread died (the model can serve nothing more)."""
        return self.failure is not None

    def inject_fault(self, error: BaseException) -> None:
        """Test seam: the decode thread raises ``error`` before its next step, as a bug
        outside any step would, and dies as such a thread does (see the module docstring)."""
        self._inbox.put(_Fault(error))

    @property
    def pending(self) -> int:
        """Requests admitted and not yet finished (waiting or holding a slot)."""
        return self._pending

    @property
    def busy_slots(self) -> int:
        return self._busy

    @property
    def queued(self) -> int:
        """Requests admitted that do not hold a slot yet."""
        return max(0, self._pending - self._busy)

    @property
    def warming(self) -> bool:
        """Whether an idle slot still has a chunk of its finished turn to warm (``_warm``):
        from another thread, a snapshot that settles once the thread has caught up."""
        return any(
            slot.sequence is None
            and warm_start(len(slot.turn), slot.evaluated, self._chunk) is not None
            for slot in self._slots
        )

    def queued_by_class(self) -> dict[str, int]:
        """Requests admitted that do not hold a slot yet, per priority class."""
        with self._pending_lock:
            return {name: n for name, n in self._queued_by_class.items() if n > 0}

    # -- requests ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> GenerationStream:
        """Queue a generation; raises QueueFullError when the wait queue is full."""
        stream = GenerationStream(asyncio.get_running_loop())
        self._admit()
        self._count_queued(request.priority, 1)
        try:
            self._enqueue(_Submission(request, stream, time.perf_counter()))
        except BaseException:
            self._count_queued(request.priority, -1)
            self._release()
            raise
        if may_take_reserved(request.priority) or self._warming:
            self._interrupt.request()  # heeded only by an interruptible decode
        return stream

    async def embed(self, inputs: Sequence[str | list[int]], *, truncate: bool) -> EmbeddingResult:
        """Embed texts, or token ids as they are (OpenAI's embeddings take either)."""
        self._admit()
        try:
            return await self._call(lambda: self._embed(inputs, truncate))
        finally:
            self._release()

    async def tokenize(self, text: str) -> list[int]:
        return await self._call(lambda: self._require_context().tokenize(text))

    def _enqueue(self, item: _Job | _Submission) -> None:
        with self._gate:
            if self.failure is not None:
                raise EngineFailedError(str(self.failure))
            self._inbox.put(item)

    def _admit(self) -> None:
        with self._pending_lock:
            if self._pending >= self.max_pending:
                raise QueueFullError()
            self._pending += 1

    def _release(self) -> None:
        with self._pending_lock:
            self._pending -= 1

    def _count_queued(self, priority: str, change: int) -> None:
        with self._pending_lock:
            self._queued_by_class[priority] += change

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

        def fail(error: BaseException) -> None:
            loop.call_soon_threadsafe(settle, None, error)

        self._enqueue(_Job(job, fail))
        return await future

    # -- the decode thread: the loop ---------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:
            self._die(exc)

    def _serve(self) -> None:
        while True:
            if not self._take_inbox():
                return
            try:
                self._expire_waiting()
                self._fill_slots()
                if self._busy:
                    self._step()
                self._warm()
            except Exception as exc:  # A failed step fails its sequences, not the thread.
                log.exception("decode step on %s failed", self.name)
                self._fail_all(EngineError("generation failed", detail=repr(exc)))

    def _take_inbox(self) -> bool:
        """Handle everything in the inbox, blocking while there is nothing else to do;
        False once told to stop."""
        # Waiting requests imply busy slots (free ones are filled at once), so an idle thread
        # has no deadline to watch and may sleep until something arrives.
        # Nor while an idle slot has a finished turn to warm (``_warm``).
        block = not self._busy and not self._waiting and self._warm_choice() is None
        # What arrives from here on is seen at the next step: only later arrivals stop it.
        self._interrupt.request(False)
        while True:
            try:
                if block:
                    item = self._inbox.get()
                    block = False
                    self._interrupt.request(False)
                else:
                    item = self._inbox.get_nowait()
            except queue.Empty:
                return True
            if item is None:
                return False
            if isinstance(item, _Fault):
                raise item.error
            if isinstance(item, _Submission):
                self._receive(item)
                continue
            try:
                item.run()
            except Exception:  # A job reports its own errors; this is a last resort.
                log.exception("job on %s failed", self.name)

    def _receive(self, submission: _Submission) -> None:
        stream = submission.stream
        if stream.cancelled:
            self._finish_unstarted(submission, _stats("cancelled", 0, 0, 0, 0))
            return
        try:
            context = self._require_context()
            prompt = submission.request.prompt
            # Tokenizing runs on this thread, which every sequence of the model shares: a
            # prompt that cannot fit (megabytes of it) is refused without. (Only one of more
            # than n_ctx characters can be, so short ones never ask for the longest token.)
            if len(prompt) > self.n_ctx and len(prompt) > self.n_ctx * context.max_piece_bytes:
                raise InvalidRequestError(prompt_too_long_message(None, self.n_ctx))
            tokens = context.tokenize(prompt)
            tokens = with_context(submission.request.context, tokens, context)
            if not tokens:  # Nothing to evaluate, so no logits to sample from.
                raise InvalidRequestError("the prompt is empty")
            if len(tokens) >= self.n_ctx:
                raise InvalidRequestError(prompt_too_long_message(len(tokens), self.n_ctx))
        except (InvalidRequestError, EngineError) as exc:
            self._finish_unstarted(submission, exc)
            return
        self._waiting.append(_Waiting(submission, tokens))

    def _expire_waiting(self) -> None:
        timeout = self.config.queue_timeout_s
        now = time.perf_counter()
        kept: deque[_Waiting] = deque()
        for waiting in self._waiting:
            submission = waiting.submission
            if submission.stream.cancelled:
                self._finish_unstarted(submission, _stats("cancelled", 0, 0, 0, 0))
            elif timeout is not None and now - submission.submitted_at >= timeout:
                self._finish_unstarted(submission, QueueTimeoutError())
            else:
                kept.append(waiting)
        self._waiting = kept

    def _fill_slots(self) -> None:
        while self._waiting:
            free = [slot for slot in self._slots if slot.sequence is None]
            if not free:
                return
            waiting = self._take_next_waiting()
            if waiting is None:  # only reserved slots are free, and nobody waiting may take them
                return
            views = {
                s.seq_id: SlotView(s.cached, s.evaluated, s.last_used, s.seq_id)
                for s in self._slots
            }
            busy = {s.seq_id for s in self._slots if s.sequence is not None}
            free_views = [views[s.seq_id] for s in free]
            choice = choose_slot(free_views, waiting.tokens, self._chunk, busy)
            slot, reuse = free[choice.index], choice.reuse
            source: tuple[_Slot, int] | None = None
            # Where the reused cache would start a run of busy sequence ids of its own, it is
            # copied into a slot beside the busy ones instead.
            moved = run_keeping_target(free_views, choice.index, reuse, busy, waiting.tokens)
            if moved is not None:
                source, slot = (slot, reuse), free[moved]
                reuse = reusable_prefix(slot.cached, slot.evaluated, waiting.tokens, self._chunk)
                if reuse >= source[1]:
                    source = None
            others = [s for s in self._slots if s is not slot]
            shared = shared_source(
                [views[s.seq_id] for s in others],
                waiting.tokens,
                reuse if source is None else source[1],
                self.n_ctx,
                self._chunk,
            )
            if shared is not None:
                source = (others[shared[0]], shared[1])
            self._assign(slot, waiting, reuse, source)

    def _take_next_waiting(self) -> _Waiting | None:
        """Out of the waiting requests, the one that takes the next free slot (see
        ``priority.next_admitted``)."""
        now = time.perf_counter()
        views = [
            QueuedView(w.submission.request.priority, now - w.submission.submitted_at)
            for w in self._waiting
        ]
        busy = Counter(
            s.sequence.submission.request.priority for s in self._slots if s.sequence is not None
        )
        index = next_admitted(views, busy, self.parallel, self.config.priority)
        if index is None:
            return None
        waiting = self._waiting[index]
        del self._waiting[index]
        return waiting

    def _assign(
        self, slot: _Slot, waiting: _Waiting, reuse: int, source: tuple[_Slot, int] | None = None
    ) -> None:
        """Start a waiting request in ``slot``, reusing the first ``reuse`` tokens it holds, or
        the first tokens ``source`` (another slot, ``scheduling.shared_source``) holds, copied
        over."""
        context = self._require_context()
        submission, tokens = waiting.submission, waiting.tokens
        params = submission.request.params
        try:
            grammar = (
                self._grammars.gbnf(params.output_format)
                if params.output_format is not None
                else None
            )
            sampler = (
                None
                if plain_greedy(params, grammar=grammar)
                else build_chain(context, params, tokens, grammar=grammar)
            )
        except (InvalidRequestError, EngineError) as exc:
            self._finish_unstarted(submission, exc)
            return
        if source is not None:
            context.copy_sequence(source[0].seq_id, slot.seq_id)
            reuse = source[1]
        if not context.keep_prefix(slot.seq_id, reuse):
            context.clear(slot.seq_id)
            reuse = 0
        slot.cached = tokens[:reuse]
        slot.evaluated = reuse
        slot.turn = []  # what was warmed stays in the reused prefix; the rest is abandoned
        now = time.perf_counter()
        sequence = _Sequence(
            submission=submission,
            tokens=tokens,
            sampler=sampler,
            budget=generation_budget(len(tokens), self.n_ctx, params.num_predict),
            n_fed=reuse,
            reused=reuse,
            assigned_at=now,
            stops=StopMatcher(params.stop),
        )
        slot.sequence = sequence
        slot.last_used = now
        self._busy += 1
        self._count_queued(submission.request.priority, -1)
        submission.stream._put(_Started(len(tokens), now - submission.submitted_at))
        if sequence.budget == 0:
            self._finish(slot, "length")

    # -- the decode thread: one step ---------------------------------------------------------

    def _step(self) -> None:
        """One token for every decoding sequence, in one ``llama_decode`` with the rows in
        sequence-id order (so llama.cpp computes each run of consecutive ids at once), and
        the planned prompt chunks, each in a ``llama_decode`` of its own: a chunk's logits are
        then what they would be alone, whatever else runs. The chunks go first while an
        interactive prompt is among them and batch work decodes (``priority.prefill_first``),
        so its first token does not wait for that decode, and an interactive prompt's chunks
        go before batch prompts' (``priority.prefill_order``); sequences are independent, so
        the order changes no output. A decode of a lower class that a newly arrived request of
        the highest class stops (``_run_decode``) ends the step: what it had not done yet
        waits for the next one, after that request's prompt."""
        self._drop_abandoned()
        decoding = self._unpaused(
            [s for s in self._slots if s.sequence is not None and not s.sequence.prefilling]
        )
        prefilling = sorted(
            (s for s in self._slots if s.sequence is not None and s.sequence.prefilling),
            key=lambda s: (
                prefill_order(s.sequence.submission.request.priority, s.sequence.assigned_at)
                if s.sequence is not None
                else (0, 0.0)
            ),
        )
        if prefill_first(_classes(prefilling), _classes(decoding)):
            if self._prefill(prefilling):
                self._decode(decoding)
        elif self._decode(decoding):
            self._prefill(prefilling)

    def _unpaused(self, decoding: list[_Slot]) -> list[_Slot]:
        """The decoding slots whose rows this step decodes: beyond the shared slots' number, a
        batch row gives its turn to a reserved slot's (``priority.paused_rows``), and keeps
        its next token for a later step."""
        views = [
            DecodingView(s.seq_id, s.sequence.submission.request.priority, s.sequence.paused_steps)
            for s in decoding
            if s.sequence is not None
        ]
        paused = paused_rows(views, self.parallel)
        for slot in decoding:
            assert slot.sequence is not None
            slot.sequence.paused_steps = (
                slot.sequence.paused_steps + 1 if slot.seq_id in paused else 0
            )
        return [slot for slot in decoding if slot.seq_id not in paused]

    def _run_decode(self, rows: list[Row], classes: list[str]) -> bool:
        """``llama_decode`` of ``rows`` (of sequences of ``classes``); False if a request of
        the highest class arrived meanwhile and stopped it (``priority.interruptible``), its
        rows then in no sequence's KV memory, to be decoded again."""
        armed = interruptible(classes, self._busy < self.slot_count, self._interrupted)
        done = self._decode_armed(rows, armed)
        if not any(map(may_take_reserved, classes)):  # a lower classes' decode
            self._interrupted = not done  # never two stopped in a row
        return done

    def _decode_armed(self, rows: list[Row], armed: bool) -> bool:
        """``llama_decode`` of ``rows``, which a requested interrupt stops if ``armed``;
        False if it was stopped."""
        context = self._require_context()
        if armed:
            self._interrupt.arm(True)
        try:
            return context.decode(rows)
        finally:
            if armed:
                self._interrupt.arm(False)

    def _decode(self, decoding: list[_Slot]) -> bool:
        """One token for each of the decoding slots; False if the decode was stopped
        (``_run_decode``), each then holding its next token for the next step."""
        if decoding:
            rows = []
            for slot in decoding:
                sequence = slot.sequence
                assert sequence is not None and sequence.next_token is not None
                rows.append(Row(sequence.next_token, len(slot.cached), slot.seq_id, True))
                slot.cached.append(sequence.next_token)
                sequence.next_token = None
            fillers = self._fillers(rows)
            batch = sorted(rows + fillers, key=lambda row: row.seq_id)
            runs = decode_runs([row.seq_id for row in batch])
            self.decode_steps += 1
            self.decode_computations += runs
            started = time.perf_counter()
            done = self._run_decode(batch, _classes(decoding))
            if not done:  # no row of the batch is in the KV memory, fillers included
                for slot, row in zip(decoding, rows, strict=True):
                    assert slot.sequence is not None
                    slot.cached.pop()
                    slot.sequence.next_token = row.token
                return False
            if runs == 1:
                self._step_costs.observe(len(batch), time.perf_counter() - started)
            self._drop_fillers(fillers)
            context = self._require_context()
            greedy = (
                context.argmax_rows(len(rows))
                if any(s.sequence is not None and s.sequence.sampler is None for s in decoding)
                else None
            )
            index = {row.seq_id: i for i, row in enumerate(batch)}
            for ordinal, slot in enumerate(decoding):
                assert slot.sequence is not None
                token = self._sample(
                    slot.sequence,
                    index[slot.seq_id],
                    None if greedy is None else greedy[ordinal],
                )
                self._advance(slot, slot.sequence, token)
        return True

    def _fillers(self, rows: list[Row]) -> list[Row]:
        """Throwaway rows (no logits, each at the position after what its slot holds, dropped
        after the decode) for slots not decoding this step: free ones between the decoding
        sequence ids where joining their runs into one llama.cpp computation is estimated to
        pay (``scheduling.gap_fillers``), and, where the context needs it, a neighbour of a
        row that would be its computation's only sequence (``scheduling.lone_partners``)."""
        context = self._require_context()
        if not context.cuttable:
            return []
        decoding = [row.seq_id for row in rows]
        busy = set(decoding)
        spare = {
            s.seq_id: s for s in self._slots if s.seq_id not in busy and len(s.cached) < self.n_ctx
        }
        free = {seq_id for seq_id, slot in spare.items() if slot.sequence is None}
        chosen = gap_fillers(decoding, free, self._step_costs.estimate)
        if context.pairs_lone_rows:
            positions = {row.seq_id: row.pos for row in rows}
            chosen += lone_partners(sorted(decoding + chosen), positions, spare)
        return [Row(0, len(spare[seq_id].cached), seq_id, False) for seq_id in chosen]

    def _drop_fillers(self, fillers: list[Row]) -> None:
        """Drop the filler rows' KV cells: their slots' caches are as they were."""
        context = self._require_context()
        for row in fillers:
            if not context.keep_prefix(row.seq_id, row.pos):
                raise EngineError("a throwaway row could not be dropped from the KV memory")

    def _prefill(self, prefilling: list[_Slot]) -> bool:
        """The prompt pieces that fit in this step's budget, longest waiting first, each in a
        decode of its own but the short last pieces of several prompts, which share one
        (``scheduling.shared_prefill``), after the others; False if one was stopped
        (``_run_decode``: it and those after it wait for the next step)."""
        progress = [(s.sequence.n_fed, len(s.sequence.tokens)) for s in prefilling if s.sequence]
        budget = max(self.config.n_batch, self._chunk)
        plan = plan_prefill(progress, budget, self._chunk, self._span)
        pieces = []
        fed = [len(slot.cached) for slot in prefilling]
        for index, n in plan:
            n_fed, tokens = progress[index]
            pieces.append((fed[index], n, n_fed + n == tokens))
            progress[index] = (n_fed + n, tokens)
            fed[index] += n
        context = self._require_context()
        below = LONE_ROW_TOKENS if context.pairs_lone_rows else None
        shared = set(shared_prefill(pieces, self._chunk, context.capacity, below))
        for i, (index, n) in enumerate(plan):
            if i not in shared and not self._feed([(prefilling[index], n)]):
                return False
        together = [(prefilling[plan[i][0]], plan[i][1]) for i in sorted(shared)]
        return not together or self._feed(together)

    def _feed(self, pieces: list[tuple[_Slot, int]]) -> bool:
        """Evaluate the next prompt tokens of slots' sequences in one decode, ``n`` of each
        (the rows in sequence id order); after a sequence's last one, sample its first token.
        False if the decode was stopped (``_run_decode``)."""
        pieces = sorted(pieces, key=lambda piece: piece[0].seq_id)
        rows: list[Row] = []
        lasts: list[int] = []
        for slot, n in pieces:
            sequence = slot.sequence
            assert sequence is not None
            chunk = sequence.tokens[sequence.n_fed : sequence.n_fed + n]
            completes = sequence.n_fed + n == len(sequence.tokens)
            start = len(slot.cached)
            rows.extend(
                Row(token, start + i, slot.seq_id, completes and i == n - 1)
                for i, token in enumerate(chunk)
            )
            lasts.append(len(rows) - 1)
        classes = [slot.sequence.submission.request.priority for slot, _ in pieces if slot.sequence]
        if not self._run_decode(rows, classes):
            return False
        for (slot, n), last in zip(pieces, lasts, strict=True):
            sequence = slot.sequence
            assert sequence is not None
            slot.cached.extend(sequence.tokens[sequence.n_fed : sequence.n_fed + n])
            sequence.n_fed += n
            slot.evaluated = evaluated_prefix(sequence.n_fed, self._chunk)
            if sequence.n_fed == len(sequence.tokens):
                self._advance(slot, sequence, self._sample(sequence, last))
        return True

    def _warm_choice(self) -> tuple[_Slot, int] | None:
        """The idle slot and position of the finished turn's chunk to warm now, if any
        (``scheduling.next_warm_chunk``): none while a request waits for a slot or its
        prompt's chunks, or while the inbox holds something new."""
        idle = [slot for slot in self._slots if slot.sequence is None and slot.turn]
        if not idle:
            return None
        prompt_work = (
            bool(self._waiting)
            or any(s.sequence is not None and s.sequence.prefilling for s in self._slots)
            or not self._inbox.empty()
        )
        views = [WarmView(len(s.turn), s.evaluated, s.last_used) for s in idle]
        chosen = next_warm_chunk(views, self._chunk, prompt_work=prompt_work)
        return None if chosen is None else (idle[chosen[0]], chosen[1])

    def _warm(self) -> None:
        """Evaluate one chunk of an idle slot's finished turn again, as a prompt chunk alone in
        its ``llama_decode``, after dropping the KV from its start on (which decode steps, or
        a partial chunk, wrote): a next turn that continues the conversation then reuses it,
        and its output is still that of a fresh evaluation (``scheduling.warm_start``). One
        chunk a step, so taking the slot abandons the rest at once."""
        choice = self._warm_choice()
        if choice is None:
            return
        slot, start = choice
        context = self._require_context()
        if not context.keep_prefix(slot.seq_id, start):
            slot.turn = []  # the memory cannot be cut there: the cache stays as it was
            return
        end = start + self._chunk
        rows = [
            Row(token, start + i, slot.seq_id, False)
            for i, token in enumerate(slot.turn[start:end])
        ]
        # Speculative work: a request that arrives meanwhile (``generate``) stops the chunk, so
        # a client's next request never waits for it (one-shot requests in a row each waited
        # up to a chunk's evaluation, ~0.2 s on the test model's two cores, for warming nobody
        # would reuse); the chunk is warmed again once nothing waits.
        self._warming = True
        try:
            done = self._decode_armed(rows, True)
        finally:
            self._warming = False
        if not done:
            slot.cached = slot.turn[:start]  # the memory holds what precedes the chunk
            return
        slot.cached = slot.turn[:end]
        slot.evaluated = end

    def _sample(self, sequence: _Sequence, index: int, greedy: int | None = None) -> int:
        """The next token of ``sequence`` from batch row ``index``: its chain's draw, or for
        plain greedy the arg-max (``greedy``: this row's, taken at once for the batch)."""
        context = self._require_context()
        if sequence.sampler is not None:
            token = context.sample(sequence.sampler, index)
        elif greedy is not None:
            token = greedy
        else:
            token = context.argmax(index)
        if sequence.first_token_at is None:
            sequence.first_token_at = time.perf_counter()
        wanted = sequence.submission.request.params.logprobs
        if wanted is not None:
            sequence.logprob = self._logprob(index, token, wanted)
        return token

    def _logprob(self, index: int, token: int, top: int) -> TokenLogprob:
        """A sampled token's log-probability and the ``top`` most likely at its position,
        from the logits of batch row ``index`` (still there: sampling reads, never writes)."""
        context = self._require_context()
        chosen, best = token_logprobs(context.logits(index), token, top)

        def choice(token_id: int, logprob: float) -> TokenChoice:
            data = context.piece(token_id)
            return TokenChoice(data.decode("utf-8", "replace"), data, logprob)

        return TokenLogprob(choice(token, chosen), tuple(choice(t, lp) for t, lp in best))

    def _drop_abandoned(self) -> None:
        """Free the slots of cancelled sequences and of those past their generation
        deadline."""
        timeout = self.config.generation_timeout_s
        now = time.perf_counter()
        for slot in self._slots:
            sequence = slot.sequence
            if sequence is None:
                continue
            if sequence.stream.cancelled:
                self._finish(slot, "cancelled")
            elif timeout is not None and now - sequence.assigned_at >= timeout:
                self._fail(slot, GenerationTimeoutError(timeout))

    def _advance(self, slot: _Slot, sequence: _Sequence, token: int) -> None:
        context = self._require_context()
        end = context.is_end_of_generation(token)
        if not end:
            sequence.count += 1
            sequence.generated.append(token)
            if sequence.logprob is not None:  # ahead of its text, which a stop may hold back
                sequence.stream._put(sequence.logprob)
            text = sequence.stops.feed(sequence.decoder.decode(context.piece(token)))
            if text:
                sequence.stream._put(text)
        reason = done_reason(
            end_of_generation=end,
            stop_matched=sequence.stops.stopped,
            count=sequence.count,
            budget=sequence.budget,
        )
        if reason is not None:
            self._finish(slot, reason)
        else:
            sequence.next_token = token

    def _vacate(self, slot: _Slot) -> _Sequence:
        """Take a slot's sequence out of it (the slot is free again) and free its sampler."""
        sequence = slot.sequence
        assert sequence is not None
        slot.sequence = None
        slot.last_used = time.perf_counter()
        # Not appended to again until the slot is taken; none to warm when that is off.
        slot.turn = slot.cached if self.config.warm_turns else []
        self._busy -= 1
        if sequence.sampler is not None:
            free_chain(sequence.sampler)
        return sequence

    def _finish(self, slot: _Slot, reason: DoneReason) -> None:
        sequence = self._vacate(slot)
        if reason != "cancelled" and not sequence.stops.stopped:
            tail = sequence.stops.feed(sequence.decoder.decode(b"", final=True))
            tail += sequence.stops.flush()
            if tail:
                sequence.stream._put(tail)
        ended = time.perf_counter()
        first = sequence.first_token_at if sequence.first_token_at is not None else ended
        # Released before the final message, so whoever reads it sees the request gone.
        self._release()
        sequence.stream._put(
            _stats(
                reason,
                len(sequence.tokens),
                first - sequence.assigned_at,
                sequence.count,
                ended - first,
                ttft=first - sequence.submission.submitted_at,
                cached=sequence.reused,
                tokens=(*sequence.tokens, *sequence.generated),
            )
        )

    def _finish_unstarted(self, submission: _Submission, outcome: object) -> None:
        self._count_queued(submission.request.priority, -1)
        self._release()
        submission.stream._put(outcome)

    def _fail(self, slot: _Slot, error: EngineError) -> None:
        """End a slot's sequence with an error instead of its final stats."""
        sequence = self._vacate(slot)
        self._release()
        sequence.stream._put(error)

    def _fail_all(self, error: EngineError) -> None:
        """After a failed step nothing in the slots can be trusted: fail their sequences and
        forget their caches."""
        for slot in self._slots:
            if slot.sequence is not None:
                self._fail(slot, error)
            slot.cached = []
            slot.evaluated = 0
            slot.turn = []
            if self._context is not None:
                self._context.clear(slot.seq_id)

    def _die(self, exc: BaseException) -> None:
        """The thread's last act: fail everything it holds, free the model, tell the owner."""
        log.error("the decode thread of %s died", self.name, exc_info=exc)
        error = EngineFailedError(
            f"model {self.name} failed while serving this request and is being reloaded; try again",
            detail=repr(exc),
        )
        with self._gate:
            self.failure = error
        for slot in self._slots:
            if slot.sequence is not None:
                sequence, slot.sequence = slot.sequence, None
                self._busy -= 1
                self._release()
                sequence.stream._put(error)
        while self._waiting:
            self._finish_unstarted(self._waiting.popleft().submission, error)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Submission):
                self._finish_unstarted(item, error)
            elif isinstance(item, _Job):
                item.fail(error)
        try:
            if self._context is not None:
                self._context.close()
        except Exception:
            log.exception("freeing %s after its decode thread died failed", self.name)
        self._context = None
        if self._loop is not None and self._on_failure is not None:
            with contextlib.suppress(RuntimeError):  # The loop is closed: nobody to tell.
                self._loop.call_soon_threadsafe(self._on_failure, self)

    # -- the decode thread: jobs -------------------------------------------------------------

    def _require_context(self) -> LlamaBatchContext:
        if self._context is None:
            raise EngineError(f"model {self.name} is not loaded")
        return self._context

    def _load(self) -> None:
        started = time.perf_counter()
        config = ContextConfig(
            model_path=self.config.model_path,
            n_ctx=self.config.n_ctx,
            parallel=self.slot_count,
            n_batch=batch_capacity(self._span, self.slot_count),
            n_gpu_layers=self.config.n_gpu_layers,
            n_threads=self.config.n_threads,
            flash_attn=self.config.flash_attn,
            kv_cache_type=self.config.kv_cache_type,
            batch_invariant=self.config.batch_invariant,
            tensor_split=self.config.tensor_split,
            abort=self.config.abort,
        )
        try:
            self._context = LlamaBatchContext(config)
        except (ValueError, RuntimeError, OSError) as exc:
            detail = getattr(exc, "detail", None)
            raise EngineError(
                f"failed to load model {self.name}: {exc}"
                if isinstance(exc, EngineError)
                else f"failed to load model {self.name}",
                detail=f"{exc!r}" + (f" ({detail})" if detail else ""),
            ) from exc
        self.n_ctx = self._context.n_ctx
        if self.config.priority.reserved or self.config.warm_turns:
            # Where the highest class is promised a slot at once, it waits for no lower
            # class's decode either (``_run_decode``). Not otherwise: without a slot kept for
            # it, such a request under a batch load mostly waits for a slot, not a decode.
            # And no request waits for an idle slot's warming (``_warm``).
            self._context.interruptible(self._interrupt)
        # A prompt chunk, and a span of them, must fit in one decode (options keep num_ctx
        # above that; this holds whatever a caller asks).
        self._chunk = min(self._chunk, self._context.capacity)
        self._span = min(self._span, self._context.capacity)
        self._slots = [_Slot(seq_id=i) for i in range(self.slot_count)]
        self.load_seconds = time.perf_counter() - started

    def _free(self) -> None:
        unloaded = EngineError(f"model {self.name} was unloaded")
        self._fail_all(unloaded)
        while self._waiting:
            self._finish_unstarted(self._waiting.popleft().submission, unloaded)
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        if self._context is not None:
            self._context.close()
            self._context = None

    def _embed(self, inputs: Sequence[str | list[int]], truncate: bool) -> EmbeddingResult:
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
        n_vocab = int(self._embedder.n_vocab())
        sequences = [
            self._embedder.tokenize(utf8(item), add_bos=True)
            if isinstance(item, str)
            else checked_tokens(item, n_vocab)
            for item in inputs
        ]
        too_long = [len(tokens) for tokens in sequences if len(tokens) > self.n_ctx]
        if too_long and not truncate:
            raise InvalidRequestError(prompt_too_long_message(max(too_long), self.n_ctx))
        sequences = [tokens[: self.n_ctx] for tokens in sequences]
        vectors = [self._embed_tokens(tokens) for tokens in sequences]
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(map(len, sequences)))

    def _embed_tokens(self, tokens: list[int]) -> list[float]:
        """The mean-pooled embedding of one token sequence (as ``Llama.embed`` computes it for
        one text, here for tokens a client gave)."""
        import llama_cpp

        embedder = self._embedder
        embedder._ctx.kv_cache_clear()
        embedder._batch.reset()
        embedder._batch.add_sequence(tokens, 0, True)
        embedder._ctx.decode(embedder._batch)
        embedder._batch.reset()
        pooled = llama_cpp.llama_get_embeddings_seq(embedder._ctx.ctx, 0)
        vector = [float(x) for x in pooled[: embedder.n_embd()]]
        embedder._ctx.kv_cache_clear()
        return vector


def _classes(slots: list[_Slot]) -> list[str]:
    return [s.sequence.submission.request.priority for s in slots if s.sequence is not None]


def checked_tokens(tokens: list[int], n_vocab: int) -> list[int]:
    """Token ids a client sent, if each is in the vocabulary (llama.cpp reads out of bounds or
    aborts on others) and there is at least one."""
    if not tokens:
        raise InvalidRequestError("input must not be an empty list of tokens")
    bad = next((t for t in tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise InvalidRequestError(
            f"token id {bad} is not in the model's vocabulary (0..{n_vocab - 1})"
        )
    return tokens


def with_context(
    context: tuple[int, ...], tokens: list[int], llama: LlamaBatchContext
) -> list[int]:
    """A prompt's tokens after an earlier answer's ``context`` (checked against the
    vocabulary); the prompt's own BOS goes, since the context began with one."""
    if not context:
        return tokens
    checked = checked_tokens(list(context), llama.n_vocab)
    if llama.bos is not None and tokens[:1] == [llama.bos]:
        tokens = tokens[1:]
    return [*checked, *tokens]


def _stats(
    reason: DoneReason,
    prompt_tokens: int,
    prompt_s: float,
    count: int,
    eval_s: float,
    *,
    ttft: float | None = None,
    cached: int = 0,
    tokens: tuple[int, ...] = (),
) -> GenerationStats:
    return GenerationStats(
        done_reason=reason,
        prompt_eval_count=prompt_tokens,
        prompt_eval_duration_ns=int(prompt_s * 1e9),
        eval_count=count,
        eval_duration_ns=int(eval_s * 1e9),
        time_to_first_token_s=ttft,
        cached_prompt_tokens=cached,
        tokens=tokens,
    )
