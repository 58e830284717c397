"""The model manager's rules as pure functions: the context a model loads with, which
keep_alive values never expire, and how a load makes room (evict idle models least recently
used first, wait for a busy one, refuse a model larger than the budget)."""

from __future__ import annotations

import math

import pytest

from corral_runtime.durations import MAX_KEEP_ALIVE_SECONDS
from corral_runtime.engine.manager import (
    ModelTooLargeError,
    Resident,
    RoomPlan,
    never_expires,
    plan_room,
    slots_for,
    trained_context,
    vram_budget,
)
from corral_runtime.engine.scheduling import MAX_DEFAULT_PARALLEL
from corral_runtime.gpu import (
    NO_GPU,
    VRAM_RESERVE_BYTES,
    GpuInfo,
    ModelFootprint,
    model_footprint,
    model_shape,
)

pytestmark = pytest.mark.unit


GIB = 1 << 30
# Llama 3.1 8B Q4_K_M: 32 layers, 8 KV heads of 128 + 128 values, 128 KiB of f16 cache a token.
LLAMA_8B = model_shape(
    block_count=32,
    embedding_length=4096,
    head_count=32,
    head_count_kv=8,
    key_length=None,
    value_length=None,
    feed_forward_length=14336,
    vocab_size=128256,
)


def _footprint(parallel: int, n_ctx: int = 4096) -> ModelFootprint:
    return model_footprint(
        4_920_000_000,
        LLAMA_8B,
        n_ctx=n_ctx,
        parallel=parallel,
        n_batch=512,
        kv_cache_type="f16",
        flash_attention=False,
    )


def _slots(budget: int | None, n_ctx: int = 4096, vram: int | None = None) -> int:
    one = _footprint(1, n_ctx)
    most = _footprint(MAX_DEFAULT_PARALLEL, n_ctx)
    return slots_for(one, most, budget, n_ctx, vram)


def test_default_slots_come_from_the_memory_budget() -> None:
    # 512 MiB of cache a slot at 4096 tokens: a quarter of 16 GiB holds 8, of 64 GiB 16 (the cap).
    assert _slots(16 * GIB) == 8
    assert _slots(64 * GIB) == MAX_DEFAULT_PARALLEL
    # A longer context costs more a slot: fewer of them.
    assert _slots(16 * GIB, n_ctx=16384) == 2
    # A quarter of 7 GiB holds three slots. Of 5.5 GiB the weights (4.9 GB) and the graph leave
    # about half a GiB, less than a quarter: one slot, whose estimate still fits the budget, so
    # the load is not refused for its default.
    assert _slots(7 * GIB) == 3
    assert _slots(11 * GIB // 2) == 1
    assert _footprint(1).size_bytes < 11 * GIB // 2


def test_an_offloaded_models_slots_also_fit_the_gpus_memory() -> None:
    # 64 GiB of host memory would hold 16 slots; an 8 GiB GPU holds the weights, the graph and
    # four slots' cache (a quarter of its memory), so the model stays on it whole.
    assert _slots(64 * GIB, vram=8 * GIB) == 4
    assert _footprint(4).size_bytes < 8 * GIB
    assert _slots(64 * GIB, vram=80 * GIB) == MAX_DEFAULT_PARALLEL
    # 6 GiB: what the weights and the graph leave holds two.
    assert _slots(None, vram=6 * GIB) == 2
    # A GPU too small for the weights: one slot, the fewest layers pushed back to the CPU.
    assert _slots(64 * GIB, vram=4 * GIB) == 1


def test_the_vram_that_plans_slots_is_the_free_vram_of_an_offload() -> None:
    gpu = GpuInfo(offload_supported=True, free_vram_bytes=8 * GIB)
    assert vram_budget("auto", gpu) == 8 * GIB - VRAM_RESERVE_BYTES
    assert vram_budget(-1, gpu) == vram_budget(10, gpu) == 8 * GIB - VRAM_RESERVE_BYTES
    assert vram_budget(0, gpu) is None  # nothing offloaded: the host's memory alone decides
    assert vram_budget("auto", NO_GPU) is None
    assert vram_budget("auto", GpuInfo(offload_supported=True, free_vram_bytes=0)) is None


def test_without_a_budget_slots_come_from_the_context() -> None:
    assert _slots(None) == 4
    assert _slots(None, n_ctx=16384) == 1


def test_the_context_is_at_most_what_the_model_was_trained_for() -> None:
    assert trained_context(4096, 32768) == 4096
    assert trained_context(1 << 20, 32768) == 32768
    assert trained_context(8192, None) == 8192
    assert trained_context(8192, 0) == 8192


@pytest.mark.parametrize(
    ("keep_alive", "forever"),
    [
        (300.0, False),
        (0.0, False),
        (MAX_KEEP_ALIVE_SECONDS, False),
        (MAX_KEEP_ALIVE_SECONDS * 2, True),
        (-1.0, True),
        (math.inf, True),
        (math.nan, True),
        (1e308, True),
    ],
)
def test_what_never_expires(keep_alive: float, forever: bool) -> None:
    assert never_expires(keep_alive) is forever


MIB = 1 << 20


def idle(name: str, size_mib: int, last_used: float) -> Resident:
    return Resident(name, size_mib * MIB, busy=False, last_used=last_used)


def busy(name: str, size_mib: int, last_used: float) -> Resident:
    return Resident(name, size_mib * MIB, busy=True, last_used=last_used)


def test_a_load_that_fits_evicts_nothing() -> None:
    assert plan_room([idle("a", 300, 1)], 500 * MIB, 1000 * MIB, 3) == RoomPlan()
    assert plan_room([], 500 * MIB, None, 3) == RoomPlan()


def test_idle_models_go_least_recently_used_first_and_only_as_many_as_needed() -> None:
    resident = [idle("newest", 300, 30), idle("oldest", 300, 10), idle("middle", 300, 20)]
    # 900 used + 400 needed > 1000: one must go, the oldest.
    assert plan_room(resident, 400 * MIB, 1000 * MIB, 9) == RoomPlan(evict=("oldest",))
    # 900 + 700 > 1000: two must go.
    assert plan_room(resident, 700 * MIB, 1000 * MIB, 9) == RoomPlan(evict=("oldest", "middle"))


def test_a_busy_model_is_never_evicted_and_idle_ones_go_around_it() -> None:
    resident = [busy("old-busy", 300, 1), idle("newer-idle", 300, 5)]
    assert plan_room(resident, 500 * MIB, 1000 * MIB, 9) == RoomPlan(evict=("newer-idle",))


def test_when_only_a_busy_model_could_make_room_the_load_waits_evicting_nothing() -> None:
    resident = [busy("a", 600, 1), idle("b", 100, 2)]
    # Even with b gone, 600 + 500 > 1000: wait for a, and keep b until that is decided again.
    assert plan_room(resident, 500 * MIB, 1000 * MIB, 9) == RoomPlan(wait=True)
    # Once a is idle, it goes (least recently used), and b may stay.
    resident = [idle("a", 600, 3), idle("b", 100, 2)]
    assert plan_room(resident, 500 * MIB, 1000 * MIB, 9) == RoomPlan(evict=("b", "a"))


def test_a_model_larger_than_the_whole_budget_never_fits() -> None:
    assert plan_room([], 1001 * MIB, 1000 * MIB, 9) == RoomPlan(never_fits=True)
    # Even with nothing loaded and everything idle: refused, nothing evicted.
    assert plan_room([idle("a", 10, 1)], 1001 * MIB, 1000 * MIB, 9).evict == ()
    assert plan_room([], 1000 * MIB, 1000 * MIB, 9) == RoomPlan()  # exactly the budget fits


def test_the_model_count_evicts_too_but_never_waits() -> None:
    resident = [idle("a", 1, 1), idle("b", 1, 2)]
    assert plan_room(resident, MIB, None, 2) == RoomPlan(evict=("a",))
    # Over the count with every model busy: the load goes ahead (a count is no memory limit).
    assert plan_room([busy("a", 1, 1), busy("b", 1, 2)], MIB, None, 2) == RoomPlan()


def test_the_refusal_reads_as_ollama_s() -> None:
    error = ModelTooLargeError("qwen2.5-coder:0.5b", 897 * MIB, 600 * MIB)
    assert str(error).startswith(
        "model requires more system memory (897.0 MiB) than is available (600.0 MiB)"
    )
    assert "qwen2.5-coder:0.5b" in str(error)
