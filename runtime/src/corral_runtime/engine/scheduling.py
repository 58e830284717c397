"""The continuous-batching scheduler's decisions, as pure functions of plain values.

The decode thread (``worker.py``) owns llama.cpp and calls these to decide which slot a request
takes, how much of a cached prompt it reuses, how many prompt tokens go into the next batch and
when a sequence is done. Keeping them free of llama.cpp makes each rule testable on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from corral_runtime.engine.types import DoneReason

# Slots per model when the server does not say: as many as keep the KV memory of all slots
# within this many tokens (a 4096-token context gets 4 slots), at least one and at most
# ``MAX_DEFAULT_PARALLEL``.
DEFAULT_KV_TOKEN_BUDGET = 16384
MAX_DEFAULT_PARALLEL = 8

# Prompts are evaluated in chunks of this many tokens, aligned at multiples of it from position
# 0, whatever else runs. llama.cpp's CPU kernels can round differently for a different number
# of a sequence's tokens in one batch, so fixed chunk boundaries are what make a prompt's
# logits (and greedy output) the same alone, in a batch, or after reusing a cached prefix.
# A chunk per step also bounds how long a new prompt delays the running streams.
PREFILL_CHUNK = 64


def default_parallel(n_ctx: int) -> int:
    """Slots for a context of ``n_ctx`` tokens per sequence when none are configured."""
    return max(1, min(MAX_DEFAULT_PARALLEL, DEFAULT_KV_TOKEN_BUDGET // max(1, n_ctx)))


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


@dataclass(frozen=True, slots=True)
class SlotChoice:
    index: int  # into the list of free slots given to ``choose_slot``
    reuse: int  # prompt tokens already in that slot's KV memory


def choose_slot(
    free: Sequence[SlotView], prompt: Sequence[int], chunk: int = PREFILL_CHUNK
) -> SlotChoice:
    """The free slot that can reuse the most of ``prompt``; when none can reuse anything, the
    least recently used one, so recent conversations keep their cache longest."""
    if not free:
        raise ValueError("no free slot to choose from")
    reuse = [reusable_prefix(view.cached, view.evaluated, prompt, chunk) for view in free]
    best = max(range(len(free)), key=lambda i: (reuse[i], -free[i].last_used))
    return SlotChoice(index=best, reuse=reuse[best])


def batch_capacity(chunk: int, parallel: int) -> int:
    """Tokens one batch holds: a decode row per slot and one prompt chunk."""
    return chunk + parallel


def prompt_chunk(n_fed: int, prompt_tokens: int, chunk: int = PREFILL_CHUNK) -> int:
    """Prompt tokens to feed at this step: up to the next aligned chunk boundary."""
    boundary = (n_fed // chunk + 1) * chunk
    return max(0, min(prompt_tokens, boundary) - n_fed)


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
