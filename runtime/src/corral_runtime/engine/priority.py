"""Request priorities: which waiting request takes the next free slot, as pure functions.

A request names its class in the ``X-Corral-Priority`` header: ``interactive`` (a person waits
for the answer) or ``batch`` (a job that only needs its answers eventually). A request without
the header is ``interactive``, so a plain Ollama or OpenAI client is served as it always was
and only a job that marks itself (or whose API key a ModelServer maps to ``batch``) yields.

Four rules decide the order, in this order of precedence:

- ``PriorityPolicy.reserved`` slots come on top of the ``parallel`` shared ones, and only the
  highest class takes them: lower classes together hold at most the shared slots, so batch
  work keeps every one of them and an interactive request still finds a slot at once however
  much batch work there is (the reserved slots' KV cache is planned with the model's memory);
- a class at its share cap (``PriorityPolicy.shares``: the most of the slots it may hold) does
  not take another slot while a request of another class waits (while none does, a free slot is
  never left idle);
- a higher class goes first, but a waiting request climbs one class for every
  ``aging_s`` seconds it waits, so a batch request is never starved by a stream of
  interactive ones;
- among equals, the one that has waited longest goes first (FIFO within a class).

Once admitted, a step decodes no more rows than the shared slots while it can
(``paused_rows``): a reserved slot's row takes a batch row's turn instead of coming on top, as
a fifth row cost the step up to twice a fourth one on the CPU.

A decode of lower-class work that is under way when a request of the highest class arrives
stops midway and is done again after that request's prompt (``interruptible``), so the request
does not wait for it.

A runtime where every request has the same class therefore serves in arrival order, as before.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# Highest first.
PRIORITY_CLASSES: tuple[str, ...] = ("interactive", "batch")
DEFAULT_PRIORITY = "interactive"
PRIORITY_HEADER = "X-Corral-Priority"
# A batch request that has waited this long is ranked as a fresh interactive one.
DEFAULT_AGING_SECONDS = 30.0
# A row left out of this many steps in a row decodes at the next one (``paused_rows``).
MAX_PAUSED_STEPS = 4


class UnknownPriorityError(ValueError):
    """A priority class that is not one of ``PRIORITY_CLASSES``."""

    def __init__(self, value: str) -> None:
        super().__init__(
            f"unknown priority {value!r} in {PRIORITY_HEADER}; "
            f"use one of: {', '.join(PRIORITY_CLASSES)}"
        )


def parse_priority(value: str | None) -> str:
    """The class a header value names (case and spaces aside); the default for none."""
    if value is None or not value.strip():
        return DEFAULT_PRIORITY
    name = value.strip().lower()
    if name not in PRIORITY_CLASSES:
        raise UnknownPriorityError(value)
    return name


@dataclass(frozen=True, slots=True)
class PriorityPolicy:
    """How a model's slots are shared between classes."""

    aging_s: float = DEFAULT_AGING_SECONDS
    # Class -> the most of the slots (0 < share <= 1) it may hold while another class waits.
    shares: Mapping[str, float] = field(default_factory=dict)
    # Slots beyond the shared ones that only the highest class may take.
    reserved: int = 0


@dataclass(frozen=True, slots=True)
class QueuedView:
    """What the admission choice needs to know of one waiting request."""

    priority: str
    waited_s: float


def effective_rank(priority: str, waited_s: float, aging_s: float) -> float:
    """A waiting request's rank, lower first: its class's place in ``PRIORITY_CLASSES`` less one
    for every ``aging_s`` seconds waited (aging, so no request waits forever)."""
    aging = waited_s / aging_s if aging_s > 0 else 0.0
    return PRIORITY_CLASSES.index(priority) - aging


def share_cap(share: float, slots: int) -> int:
    """The slots a class with ``share`` may hold: at least one, so no class is shut out."""
    return max(1, math.floor(share * slots + 1e-9))


def capped_classes(
    waiting: Sequence[str], busy: Mapping[str, int], slots: int, shares: Mapping[str, float]
) -> frozenset[str]:
    """The classes among ``waiting`` that may not take a slot now: those holding their share
    while a request of another class waits."""
    present = set(waiting)
    return frozenset(
        name
        for name in present
        if name in shares
        and busy.get(name, 0) >= share_cap(shares[name], slots)
        and present - {name}
    )


def may_take_reserved(priority: str) -> bool:
    return priority == PRIORITY_CLASSES[0]


def total_slots(shared: int, policy: PriorityPolicy) -> int:
    """A model's slots in all: the ``shared`` ones (its ``parallel``) and the reserved ones on
    top, each with a context's KV cache."""
    return shared + policy.reserved


def may_take_slot(priority: str, busy: Mapping[str, int], shared: int, reserved: int) -> bool:
    """Whether a request of ``priority`` may take a free slot now: the highest class while any
    of the ``shared + reserved`` slots is free, a lower one while the lower classes together
    hold fewer than the ``shared`` slots (so the reserved ones stay for the highest class, and
    an interactive request in a shared slot costs batch nothing)."""
    held = sum(busy.values())
    if held >= shared + reserved:
        return False
    if may_take_reserved(priority):
        return True
    lower = held - busy.get(PRIORITY_CLASSES[0], 0)
    return lower < shared


def prefill_order(priority: str, assigned_at: float) -> tuple[int, float]:
    """The order a step evaluates prompt chunks in: class first (an interactive prompt's chunk,
    and so its first token, waits for no batch prompt's), then longest holding its slot."""
    return PRIORITY_CLASSES.index(priority), assigned_at


def prefill_first(prefilling: Sequence[str], decoding: Sequence[str]) -> bool:
    """Whether a step evaluates its prompt chunks before the decoding sequences' tokens
    (given each one's class): while a prompt of the highest class is among them and a lower
    class decodes, so an interactive request's first token waits for no decode of batch work.
    Otherwise decode goes first, as it always did."""
    top = PRIORITY_CLASSES[0]
    return top in prefilling and any(name != top for name in decoding)


def next_admitted(
    queued: Sequence[QueuedView], busy: Mapping[str, int], slots: int, policy: PriorityPolicy
) -> int | None:
    """The index into ``queued`` (in arrival order) of the request that takes the next free
    slot, or None where no request may take one now (none is free, or only reserved ones are
    and no request of the highest class waits). ``slots`` counts the shared slots (the
    reserved ones come on top, ``total_slots``; share caps are shares of the shared ones);
    ``busy`` counts the slots each class holds now."""
    if not queued:
        raise ValueError("no waiting request to choose from")
    allowed = [
        i for i, q in enumerate(queued) if may_take_slot(q.priority, busy, slots, policy.reserved)
    ]
    if not allowed:
        return None
    capped = capped_classes([queued[i].priority for i in allowed], busy, slots, policy.shares)
    eligible = [i for i in allowed if queued[i].priority not in capped]
    return min(
        eligible or allowed,
        key=lambda i: (
            effective_rank(queued[i].priority, queued[i].waited_s, policy.aging_s),
            -queued[i].waited_s,
            i,
        ),
    )


@dataclass(frozen=True, slots=True)
class DecodingView:
    """What the choice of a step's decode rows needs to know of one decoding sequence."""

    seq_id: int
    priority: str
    paused_steps: int  # consecutive steps it was left out of


def paused_rows(
    rows: Sequence[DecodingView], shared: int, max_paused: int = MAX_PAUSED_STEPS
) -> frozenset[int]:
    """The sequence ids to leave out of this step's decode (their KV and next token kept for a
    later step), so the step decodes no more rows than the ``shared`` slots hold.

    Why: on llama.cpp's CPU kernels a step's cost grows in steps of rows, and every run of
    consecutive sequence ids is computed apart (``scheduling.busy_runs_added``). On the test
    model (two cores) 4 rows took 37 ms, 5 rows 57 ms, and 4 rows in two runs 51 ms: an
    interactive row in a reserved slot beside four batch rows cost batch a third of its rate
    while it ran, where FIFO, the interactive request in a shared slot, cost it a quarter. Left
    out in turn, a batch row gives its step to the interactive one, as under FIFO, and the
    interactive row decodes in the cheaper step too.

    Only rows below the highest class are left out, and only where that adds no run (an end
    of a run, or a run of its own): all of the excess or none, since a step with a split run
    costs about what the extra row does. Among those, the one left out the fewest steps goes
    first; one left out ``max_paused`` steps in a row is not left out again, so no batch
    sequence stops for longer than that. With no more rows than ``shared`` (always, without
    reserved slots) nothing is left out. Whichever rows decode, each gets its own logits
    (batch invariance), so leaving one out only delays its tokens.
    """
    # Here, not at the top: scheduling imports the engine's types, which import this module.
    from corral_runtime.engine.scheduling import busy_runs_added

    excess = len(rows) - shared
    if excess <= 0:
        return frozenset()
    decoding = {row.seq_id for row in rows}
    candidates = {
        row.seq_id: row
        for row in rows
        if not may_take_reserved(row.priority) and row.paused_steps < max_paused
    }
    paused: set[int] = set()
    for _ in range(excess):
        best = max(
            (seq_id for seq_id in candidates if seq_id not in paused),
            key=lambda seq_id: (
                busy_runs_added(seq_id, decoding - {seq_id}),
                -candidates[seq_id].paused_steps,
                -seq_id,
            ),
            default=None,
        )
        if best is None or busy_runs_added(best, decoding - {best}) < 0:
            return frozenset()  # leaving it out would split a run
        paused.add(best)
        decoding.remove(best)
    return frozenset(paused)


def interruptible(classes: Sequence[str], top_slot_free: bool, interrupted_last: bool) -> bool:
    """Whether a ``llama_decode`` of rows of ``classes`` (one step's decoding rows, or one
    prompt chunk) may be stopped midway for a request of the highest class that arrives while
    it runs, and done again after that request's prompt.

    Why: an interactive request that arrives under a batch load otherwise waits for the decode
    in flight (a step of four rows took 35 ms on the test model's two cores, and the wait,
    some 28 ms at the median, was most of what a loaded TTFT had over an idle one). llama.cpp
    drops what a stopped decode wrote to the KV memory, and the same rows decoded again give
    the same logits, so no output changes; the work lost is the part done before the stop.

    Only when no row is of the highest class (its own tokens never wait), a slot is free for
    that class (without one the request waits for a slot anyway) and the decode before was not
    stopped (arrivals faster than a step still leave lower classes every other decode).
    """
    top = PRIORITY_CLASSES[0]
    return bool(classes) and top_slot_free and not interrupted_last and top not in classes
