"""The gpu_layers decision: auto fits what the free VRAM holds, numbers are clamped, and a
machine without a GPU runs everything on the CPU; the memory estimate of the two test models
from their real headers; free VRAM of every GPU; the host memory budget from cgroup files."""

from __future__ import annotations

import pytest

from corral_runtime.gpu import (
    NO_GPU,
    VRAM_RESERVE_BYTES,
    GpuInfo,
    ModelFootprint,
    kv_cache_bytes,
    model_shape,
    parse_free_vram_per_gpu,
    plan_gpu_layers,
    plannable_vram,
)

pytestmark = pytest.mark.unit

GIB = 1024**3
# 32 repeating layers + output head; 33 "layers" of 1 GiB each.
MODEL = ModelFootprint(weights_bytes=33 * GIB, block_count=32)


def gpu(free_gib: float) -> GpuInfo:
    return GpuInfo(offload_supported=True, free_vram_bytes=int(free_gib * GIB))


def test_no_gpu_means_cpu_only_whatever_was_asked() -> None:
    for requested in ("auto", 10, 0):
        plan = plan_gpu_layers(requested, MODEL, NO_GPU)  # type: ignore[arg-type]
        assert plan.gpu_layers == 0 and plan.size_vram_bytes == 0
        assert plan.size_bytes == 33 * GIB


def test_a_cpu_only_build_is_no_gpu_even_with_vram() -> None:
    plan = plan_gpu_layers(
        "auto", MODEL, GpuInfo(offload_supported=False, free_vram_bytes=80 * GIB)
    )
    assert plan.gpu_layers == 0


def test_auto_offloads_everything_when_it_fits() -> None:
    plan = plan_gpu_layers("auto", MODEL, gpu(80))
    assert plan.gpu_layers == 33
    assert plan.size_vram_bytes == plan.size_bytes


def test_auto_is_hybrid_when_vram_is_short() -> None:
    plan = plan_gpu_layers("auto", MODEL, gpu(10))
    expected = (10 * GIB - VRAM_RESERVE_BYTES) // GIB
    assert plan.gpu_layers == expected == 9
    assert plan.size_vram_bytes == 9 * GIB < plan.size_bytes


def test_auto_with_too_little_vram_stays_on_the_cpu() -> None:
    assert plan_gpu_layers("auto", MODEL, gpu(0.25)).gpu_layers == 0


def test_the_kv_cache_counts_against_vram() -> None:
    with_kv = ModelFootprint(weights_bytes=33 * GIB, block_count=32, kv_cache_bytes=33 * GIB)
    assert plan_gpu_layers("auto", with_kv, gpu(10)).gpu_layers == 4


def test_numbers_are_taken_and_clamped() -> None:
    assert plan_gpu_layers(5, MODEL, gpu(80)).gpu_layers == 5
    assert plan_gpu_layers(999, MODEL, gpu(80)).gpu_layers == 33
    assert plan_gpu_layers(0, MODEL, gpu(80)).gpu_layers == 0


def test_a_negative_number_is_auto_as_in_ollama() -> None:
    assert plan_gpu_layers(-1, MODEL, gpu(80)).gpu_layers == 33
    assert plan_gpu_layers(-1, MODEL, gpu(10)).gpu_layers == 9
    assert plan_gpu_layers(-1, MODEL, NO_GPU).gpu_layers == 0


# An old-style shape: no head counts in the header, so a full embedding per layer for K and V.
NO_HEADS = model_shape(
    block_count=18,
    embedding_length=640,
    head_count=None,
    head_count_kv=None,
    key_length=None,
    value_length=None,
    feed_forward_length=None,
    vocab_size=None,
)


def test_kv_cache_estimate_without_head_counts_is_a_full_embedding() -> None:
    assert kv_cache_bytes(2048, NO_HEADS) == 2 * 2 * 2048 * 18 * 640


def test_a_quantized_kv_cache_is_estimated_by_its_block_size() -> None:
    values = 2 * 2048 * 18 * 640  # K and V
    assert kv_cache_bytes(2048, NO_HEADS, "q8_0") == values * 34 // 32
    assert kv_cache_bytes(2048, NO_HEADS, "q4_0") == values * 18 // 32


def test_free_vram_of_every_gpu_and_the_largest_is_planned_against() -> None:
    assert parse_free_vram_per_gpu("81000\n80000\n") == (81000 << 20, 80000 << 20)
    assert parse_free_vram_per_gpu("") == ()
    # Not the first GPU (a busy GPU 0 no longer decides), not the sum (no tensor split).
    assert plannable_vram((1000 << 20, 70000 << 20, 30000 << 20)) == 70000 << 20
    assert plannable_vram(()) == 0
