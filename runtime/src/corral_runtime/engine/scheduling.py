"""The continuous-batching scheduler's decisions, as pure functions of plain values.

The decode thread (``worker.py``) owns llama.cpp and calls these to decide which slot a request
takes, how much of a cached prompt it reuses, how many prompt tokens go into the next batch,
when a sequence is done and which finished turn's chunk an idle slot evaluates again. Keeping
them free of llama.cpp makes each rule testable on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from corral_runtime.engine.types import DoneReason

# Slots per model when the server does not say (``parallel_for_memory``): as many as hold the KV
# memory of a full context each within a share of the memory budget (1 / ``KV_BUDGET_DIVISOR``,
# so other models keep room), at least one and at most ``MAX_DEFAULT_PARALLEL``. Each slot has
# a KV stream of its own (see ``engine/llama.py``: one pool shared by all slots, llama.cpp's
# ``kv_unified``, gives a row other logits beside others, so it would break batch invariance),
# so a slot costs its full context's KV memory whether used or not, and the count comes from
# the memory there is. On two cores, 16 slots serve 8 concurrent streams at about twice one
# stream's rate, and a lone stream decodes as fast as with 4 slots (``bench/defaults.py``).
KV_BUDGET_DIVISOR = 4
MAX_DEFAULT_PARALLEL = 16
# Without a memory budget (neither a cgroup limit nor /proc/meminfo): the KV memory of all slots
# within this many tokens (a 4096-token context gets 4 slots).
DEFAULT_KV_TOKEN_BUDGET = 16384

# A copy of one slot's KV memory into another (a shared prefix, ``shared_source``) moves the
# source's whole KV stream, so it costs in proportion to the context, where evaluating the
# prompt tokens it spares costs in proportion to them. On the test model (Gemma 3 270M, two
# cores; the model with the most KV per unit of compute among those served here) the copy took
# about 1 us per context token (5 ms at 4096, 127 ms at 131072) and a prompt chunk 1.2 ms per
# token: a copy pays once it spares one token per this many of the context.
CONTEXT_PER_COPIED_TOKEN = 1000

# Prompts are evaluated in chunks of this many tokens, aligned at multiples of it from position
# 0, whatever else runs. llama.cpp's CPU kernels can round differently for a different number
# of a sequence's tokens in one batch, or of rows beside them, so fixed chunk boundaries are
# what make a prompt's logits (and greedy output) the same alone, in a batch, or after reusing
# a cached prefix. Whole chunks of one prompt may share a ``llama_decode`` (``plan_prefill``'s
# spans): on the test model a prompt's logits were the same bit for bit evaluated in chunks of
# 64, 128, 256 or 512, with and without flash attention, as long as its last, partial chunk
# was evaluated alone (with flash attention, merged into whole chunks it took llama.cpp's tiled
# kernel and other logits). A span of 512 evaluated a 560-token prompt in 0.63-0.65 s where
# chunks of 64 each alone took 0.82-0.99 s (``llama_decode`` alone, with llama.cpp's default of
# four threads on two cores).
PREFILL_CHUNK = 64


def default_parallel(n_ctx: int) -> int:
    """Slots for a context of ``n_ctx`` tokens per sequence when none are configured and no
    memory budget is known (``parallel_for_memory`` otherwise)."""
    return max(1, min(MAX_DEFAULT_PARALLEL, DEFAULT_KV_TOKEN_BUDGET // max(1, n_ctx)))


def parallel_for_memory(kv_bytes_per_slot: int, budget_bytes: int, fixed_bytes: int) -> int:
    """Slots for a model when none are configured: as many as hold ``kv_bytes_per_slot`` (one
    slot's KV cache for its full context) each within a ``1 / KV_BUDGET_DIVISOR`` share of
    ``budget_bytes``, and within what the model's ``fixed_bytes`` (weights, compute graph)
    leave of it, so a model that fits with one slot is never refused for its default; at least
    one, at most ``MAX_DEFAULT_PARALLEL``.

    The operator sizes a pod with the same rule (``planners/sizing.py``), from the budget it
    gives the pod, so the pod's estimate is what its runtime allocates.
    """
    room = min(budget_bytes // KV_BUDGET_DIVISOR, budget_bytes - fixed_bytes)
    return max(1, min(MAX_DEFAULT_PARALLEL, room // max(1, kv_bytes_per_slot)))


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def reusable_prefix(
    cached: Sequence[int], evaluated: int, prompt: Sequence[int], chunk: int = PREFILL_CHUNK
) -> int:
    """How many leading prompt tokens a slot need not evaluate again.

    ``cached`` are the tokens in the slot's KV memory, of which the first ``evaluated`` were
    evaluated as whole aligned prompt chunks (generated tokens and a last partial chunk were
    evaluated differently, so reusing them could change the output). The reuse is a whole
    number of chunks, so the rest of the prompt is evaluated in the same chunks as without
    any cache, and it leaves at least the last prompt token, whose logits choose the first
    generated token.
    """
    shared = min(common_prefix(cached, prompt), evaluated, len(prompt) - 1)
    return max(0, shared // chunk * chunk)


def evaluated_prefix(n_fed: int, chunk: int = PREFILL_CHUNK) -> int:
    """Of ``n_fed`` prompt tokens fed in aligned chunks, how many lie in whole chunks."""
    return n_fed // chunk * chunk


@dataclass(frozen=True, slots=True)
class SlotView:
    """What the slot choice needs to know of one free slot."""

    cached: Sequence[int]
    evaluated: int
    last_used: float
    seq_id: int = 0


@dataclass(frozen=True, slots=True)
class SlotChoice:
    index: int  # into the list of free slots given to ``choose_slot``
    reuse: int  # prompt tokens already in that slot's KV memory


def busy_runs_added(seq_id: int, busy: Collection[int]) -> int:
    """How many more runs of consecutive busy sequence ids there are once ``seq_id`` is busy
    too: -1 where it fills a gap between two runs, 0 where it extends one, 1 where it starts
    a new one.

    llama.cpp splits a batch over per-sequence KV streams into one computation per run of
    consecutive sequence ids (``split_equal``), and each computation reads all the weights
    again, so every run costs about one more decode step.
    """
    before, after = seq_id - 1 in busy, seq_id + 1 in busy
    return -1 if before and after else 0 if before or after else 1


def decode_runs(seq_ids: Sequence[int]) -> int:
    """How many computations llama.cpp splits a decode of rows of ``seq_ids`` (in that order)
    into: one per run of consecutive ids (see ``busy_runs_added``)."""
    return sum(1 for i, seq_id in enumerate(seq_ids) if i == 0 or seq_id != seq_ids[i - 1] + 1)


# How much a new measurement of a decode step moves its row count's estimate (``StepCosts``).
STEP_COST_WEIGHT = 0.2


@dataclass
class StepCosts:
    """Seconds a decode step of one llama.cpp computation took, per row count, as measured by
    the decode thread (an exponential average of each count's steps)."""

    seconds: dict[int, float] = field(default_factory=dict)

    def observe(self, rows: int, seconds: float) -> None:
        old = self.seconds.get(rows)
        self.seconds[rows] = seconds if old is None else old + (seconds - old) * STEP_COST_WEIGHT

    def estimate(self, rows: int) -> float | None:
        """A step of ``rows``: measured, or on the line between the nearest counts measured
        below and above it (past the largest, on the line through the smallest and largest);
        None until two counts are known, or below the smallest."""
        if rows in self.seconds:
            return self.seconds[rows]
        known = sorted(self.seconds)
        below = [n for n in known if n < rows]
        above = [n for n in known if n > rows]
        if len(known) < 2 or not below:
            return None
        low, high = (below[-1], above[0]) if above else (known[0], known[-1])
        slope = (self.seconds[high] - self.seconds[low]) / (high - low)
        return self.seconds[low] + slope * (rows - low)


def gap_fillers(
    decoding: Sequence[int],
    fillable: Collection[int],
    step_seconds: Callable[[int], float | None],
) -> list[int]:
    """Sequence ids to decode a throwaway row for beside ``decoding`` (sorted sequence ids), so
    that runs of consecutive ids separated by gaps of ``fillable`` ones become one run: one
    llama.cpp computation instead of one per run (``decode_runs``).

    A filler row costs its share of the computation and each run saved costs another pass
    over the weights, so runs are joined, left to right, where the estimated step of the joined
    rows (``step_seconds``, from the steps measured: ``StepCosts``) is shorter than the two
    apart; where a gap has an id that cannot be filled, or no estimate is known, they stay
    apart. On the test model (two cores), eight rows on every other id took 84 ms a step,
    those eight with seven fillers about 51.
    """
    fillers: list[int] = []
    group = 0  # rows of the run being joined onto (fillers included)
    for index, seq_id in enumerate(decoding):
        previous = decoding[index - 1] if index else None
        if previous is None or seq_id == previous + 1:
            group += 1
            continue
        run = 1
        while index + run < len(decoding) and decoding[index + run] == seq_id + run:
            run += 1
        gap = list(range(previous + 1, seq_id))
        joined = step_seconds(group + len(gap) + run)
        apart = [step_seconds(group), step_seconds(run)]
        if (
            all(g in fillable for g in gap)
            and joined is not None
            and None not in apart
            and joined < sum(s for s in apart if s is not None)
        ):
            fillers += gap
            group += len(gap) + 1
        else:
            group = 1
    return fillers


# A decoding row whose sequence holds at least this many tokens is never computed as a lone
# sequence (``lone_partners``) where flash attention runs on the CPU: llama.cpp splits a lone
# sequence's one row over the threads once the KV cells it attends to reach 512 (a row at
# position 256 or later, as it pads them in blocks of 256), which sums in another order than
# beside other sequences. On the test model a lone row's logits were its own beside another
# sequence's at positions 240-255 and not at 256-269. Less 16 tokens, as a margin.
LONE_ROW_TOKENS = 240


def lone_partners(
    batch: Sequence[int],
    positions: Mapping[int, int],
    spare: Collection[int],
    min_tokens: int = LONE_ROW_TOKENS,
) -> list[int]:
    """Sequence ids to decode a throwaway row for, so that no decoding row of a sequence
    holding ``min_tokens`` or more (``positions``: each decoding sequence's row position) is
    the only sequence of its run of consecutive ids in ``batch`` (sorted ids, fillers
    included): the next id if ``spare`` (not decoding and room for a row), else the one
    before. A row with neither stays alone."""
    ids = set(batch)
    partners: list[int] = []
    for seq_id in sorted(batch):
        alone = seq_id - 1 not in ids and seq_id + 1 not in ids
        if not alone or positions.get(seq_id, 0) < min_tokens:
            continue
        for partner in (seq_id + 1, seq_id - 1):
            if partner in spare and partner not in ids:
                ids.add(partner)
                partners.append(partner)
                break
    return partners


def choose_slot(
    free: Sequence[SlotView],
    prompt: Sequence[int],
    chunk: int = PREFILL_CHUNK,
    busy: Collection[int] = (),
) -> SlotChoice:
    """The free slot where ``prompt`` saves the most: the tokens it reuses less the evaluated
    tokens of another conversation it would overwrite (``dropped_history``), so a new
    conversation sharing only a system prompt with a slot's longer history takes an empty slot
    instead of costing that conversation its history at its next turn. Among equals, the slot
    that keeps the busy sequence ids in the fewest runs (``busy_runs_added``), then the least
    recently used one, so recent conversations keep their cache longest."""
    if not free:
        raise ValueError("no free slot to choose from")
    reuse = [reusable_prefix(view.cached, view.evaluated, prompt, chunk) for view in free]
    best = max(
        range(len(free)),
        key=lambda i: (
            reuse[i] - dropped_history(free[i], prompt),
            -busy_runs_added(free[i].seq_id, busy),
            -free[i].last_used,
        ),
    )
    return SlotChoice(index=best, reuse=reuse[best])


def run_keeping_target(
    free: Sequence[SlotView],
    chosen: int,
    reuse: int,
    busy: Collection[int],
    prompt: Sequence[int] = (),
) -> int | None:
    """Another free slot (index into ``free``) to move the chosen slot's cache into, so that
    the request's sequence id extends or joins a run of busy ones instead of starting a run of
    its own (``busy_runs_added``); None where it already does, nothing is busy, the chosen
    slot holds nothing the request reuses, or no free slot beside a busy one holds nothing of
    another conversation's evaluated history (``dropped_history``: that conversation's next
    turn would evaluate it again).

    The slot choice puts reuse first, so a conversation's next turn returns to the slot holding
    its history wherever that lies among the busy ones. Every further run costs each decode
    step another pass over the weights (on the test model, eight rows on every other sequence
    id took 84 ms a step against 42 for eight in a row), where moving the cache is one copy of
    the slot's KV stream (about 1 us per context token there) and keeps the output, as the
    copied values are the ones the slot computed. Of the slots that qualify: the one that
    joins two runs first, then the least recently used.
    """
    if not busy or reuse == 0 or busy_runs_added(free[chosen].seq_id, busy) <= 0:
        return None
    targets = [
        index
        for index, view in enumerate(free)
        if index != chosen
        and busy_runs_added(view.seq_id, busy) <= 0
        and dropped_history(view, prompt) == 0
    ]
    if not targets:
        return None
    return min(targets, key=lambda i: (busy_runs_added(free[i].seq_id, busy), free[i].last_used))


def copy_saves(tokens: int, n_ctx: int, chunk: int = PREFILL_CHUNK) -> bool:
    """Whether copying a slot's KV memory to spare evaluating ``tokens`` prompt tokens is worth
    it: at least a chunk, and at least one token per ``CONTEXT_PER_COPIED_TOKEN`` of the
    context, as llama.cpp copies a slot's whole KV stream (``n_ctx`` tokens' worth)."""
    return tokens >= max(chunk, -(-n_ctx // CONTEXT_PER_COPIED_TOKEN))


def shared_source(
    others: Sequence[SlotView],
    prompt: Sequence[int],
    reuse: int,
    n_ctx: int,
    chunk: int = PREFILL_CHUNK,
) -> tuple[int, int] | None:
    """Another slot (free or busy) whose KV memory holds more of ``prompt`` than the chosen
    slot's own ``reuse``, as (index into ``others``, tokens it holds), the most first; None
    when none holds enough more for a copy to pay (``copy_saves``).

    Copying that slot's memory into the chosen one (``LlamaBatchContext.copy_sequence``) then
    saves evaluating those chunks again: a new conversation that shares only a system prompt
    with conversations already on the server starts past it. The copy is of whole aligned
    chunks evaluated as prompt, the same values the chosen slot would compute, so the output
    is unchanged.
    """
    best: tuple[int, int] | None = None
    for index, view in enumerate(others):
        held = reusable_prefix(view.cached, view.evaluated, prompt, chunk)
        if copy_saves(held - reuse, n_ctx, chunk) and (best is None or held > best[1]):
            best = (index, held)
    return best


def dropped_history(view: SlotView, prompt: Sequence[int]) -> int:
    """Evaluated tokens of the slot's cache that ``prompt`` would overwrite: those past where
    the prompt leaves the cache. None when the prompt continues what the slot holds (the same
    conversation's next turn)."""
    return max(0, view.evaluated - common_prefix(view.cached, prompt))


@dataclass(frozen=True, slots=True)
class WarmView:
    """What the choice of a chunk to warm needs to know of one slot."""

    finished: int  # tokens of the slot's last finished turn (prompt and answer); 0 while taken
    evaluated: int  # of those, leading tokens evaluated as whole prompt chunks
    last_used: float  # when the turn finished


def warm_start(finished: int, evaluated: int, chunk: int = PREFILL_CHUNK) -> int | None:
    """Where the next chunk of a finished turn to evaluate again as a prompt chunk starts, or
    None when no whole aligned chunk of the turn lies past ``evaluated``.

    A turn's answer (and its prompt's last partial chunk) were evaluated by decode steps, which
    round differently from a prompt chunk, so the next turn cannot reuse them; evaluated again
    as aligned prompt chunks while the slot is idle, they are what that turn would compute
    itself, so it reuses them. A last partial chunk stays: the next turn's chunk there holds
    tokens not known yet."""
    start = evaluated // chunk * chunk
    return start if start + chunk <= finished else None


def next_warm_chunk(
    slots: Sequence[WarmView], chunk: int = PREFILL_CHUNK, *, prompt_work: bool = False
) -> tuple[int, int] | None:
    """The chunk to warm at this step, as (index into ``slots``, its first position), or None.

    Warming is the least urgent work there is: none while ``prompt_work`` (a request waits for
    a slot, or a prompt for its chunks), since a warm chunk would delay it, and one chunk per
    step at most, which the caller keeps to. Of the slots with a chunk to warm, the one whose
    turn finished first, as its conversation's next turn is likely due first."""
    if prompt_work:
        return None
    candidates = [
        (view.last_used, index, start)
        for index, view in enumerate(slots)
        if (start := warm_start(view.finished, view.evaluated, chunk)) is not None
    ]
    if not candidates:
        return None
    _, index, start = min(candidates)
    return index, start


def batch_capacity(span: int, parallel: int) -> int:
    """Tokens one ``llama_decode`` holds: a decode row per slot, or one span of prompt chunks
    (``plan_prefill``)."""
    return max(span, parallel)


def prompt_chunk(n_fed: int, prompt_tokens: int, chunk: int = PREFILL_CHUNK) -> int:
    """Prompt tokens to feed at this step: up to the next aligned chunk boundary."""
    boundary = (n_fed // chunk + 1) * chunk
    return max(0, min(prompt_tokens, boundary) - n_fed)


def plan_prefill(
    prompts: Sequence[tuple[int, int]],
    budget: int,
    chunk: int = PREFILL_CHUNK,
    span: int | None = None,
) -> list[tuple[int, int]]:
    """The prompt spans to evaluate at one step, each in a ``llama_decode`` of its own, as
    (index into ``prompts``, tokens).

    ``prompts`` are the prompts still being fed, as (tokens fed, prompt tokens), longest
    waiting first. Aligned chunks (``prompt_chunk``) are taken in that order until ``budget``
    prompt tokens are planned, so several new prompts start at the same step; the first chunk
    is always taken, so a budget below one chunk still makes progress. Consecutive whole
    chunks of one prompt make one span of up to ``span`` tokens (default: ``chunk``, a chunk
    a span); a partial chunk (a prompt's last, or one ending at the first boundary after an
    unaligned start) is a span of its own, so a prompt's logits never depend on what else runs
    or on how many of its chunks a step takes (see ``PREFILL_CHUNK``).
    """
    limit = chunk if span is None else max(chunk, span)
    plan: list[tuple[int, int]] = []
    planned = 0
    for index, (n_fed, prompt_tokens) in enumerate(prompts):
        while n_fed < prompt_tokens:
            n = prompt_chunk(n_fed, prompt_tokens, chunk)
            if plan and planned + n > budget:
                return plan
            last = plan[-1] if plan else None
            if (
                last is not None
                and last[0] == index
                and n == chunk
                and last[1] % chunk == 0
                and last[1] + n <= limit
            ):
                plan[-1] = (index, last[1] + n)
            else:
                plan.append((index, n))
            planned += n
            n_fed += n
    return plan


def shared_prefill(
    pieces: Sequence[tuple[int, int, bool]], chunk: int, capacity: int, below: int | None = None
) -> list[int]:
    """Which of a step's prompt pieces, as (start position, tokens, whether it ends its
    prompt), share one ``llama_decode``: the last pieces of their prompts shorter than a chunk
    (a new conversation's short prompt, a turn's partial last chunk), at least two of them,
    else none. The kernels batch invariance keeps give such a row the same result whatever
    shares its decode, so each prompt's logits are its own (on the test model bit for bit,
    with and without flash attention; eight short prompts took 151-166 ms together against
    171-198 ms apart).
    ``below`` (where flash attention runs on the CPU): only pieces ending at or before it, as
    llama.cpp's split of a lone row's attention (see ``LONE_ROW_TOKENS``) could otherwise
    reach a row that a decode of its own would not give it. In order, as long as their tokens
    fit in one decode (``capacity``)."""
    chosen: list[int] = []
    total = 0
    for index, (start, tokens, ends) in enumerate(pieces):
        if ends and tokens < chunk and (below is None or start + tokens <= below):
            if total + tokens > capacity:
                break
            chosen.append(index)
            total += tokens
    return chosen if len(chosen) > 1 else []


def generation_budget(prompt_tokens: int, n_ctx: int, num_predict: int) -> int:
    """Tokens a sequence may generate: what fits in its context, capped by ``num_predict``
    (negative: no cap)."""
    budget = max(0, n_ctx - prompt_tokens)
    return budget if num_predict < 0 else min(budget, num_predict)


def done_reason(
    *, end_of_generation: bool, stop_matched: bool, count: int, budget: int
) -> DoneReason | None:
    """Why a sequence ends after its latest token, or None while it goes on. ``count`` is the
    number of tokens generated so far, the latest included unless it ended the generation."""
    if end_of_generation or stop_matched:
        return "stop"
    if count >= budget:
        return "length"
    return None
