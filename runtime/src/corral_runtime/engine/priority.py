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
