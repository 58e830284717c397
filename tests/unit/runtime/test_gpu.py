"""The gpu_layers decision: auto fits what the free VRAM holds, numbers are clamped, and a
machine without a GPU runs everything on the CPU; the memory estimate of the two test models
from their real headers; free VRAM of every GPU; the host memory budget from cgroup files."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.engine.manager import shape_of
from corral_runtime.gpu import (
    NO_GPU,
    VRAM_RESERVE_BYTES,
    GpuInfo,
    ModelFootprint,
    ModelShape,
    cgroup_limit_files,
    kv_cache_bytes,
    memory_budget,
    model_footprint,
    model_shape,
    parse_cgroup_limit,
    parse_free_vram_per_gpu,
    parse_mem_available,
    plan_gpu_layers,
    plannable_vram,
)
from corral_runtime.store.gguf import read_gguf_details

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


def without_heads(block_count: int, embedding_length: int) -> ModelShape:
    """A header without head counts: a full embedding per layer for K and for V."""
    return model_shape(
        block_count=block_count,
        embedding_length=embedding_length,
        head_count=None,
        head_count_kv=None,
        key_length=None,
        value_length=None,
        feed_forward_length=None,
        vocab_size=None,
    )


NO_HEADS = without_heads(18, 640)


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


# -- the estimate of the two test models, from their real headers ------------------------------

MIB = 1024**2


def default_estimate(path: Path) -> ModelFootprint:
    """The estimate at the server's defaults: n_ctx 4096, 4 slots, batch 512, f16 cache."""
    return model_footprint(
        path.stat().st_size,
        shape_of(read_gguf_details(path)),
        n_ctx=4096,
        parallel=4,
        n_batch=512,
        kv_cache_type="f16",
        flash_attention=False,
    )


def test_gemma_estimate_from_its_header(test_model_path: Path) -> None:
    details = read_gguf_details(test_model_path)
    # One key/value head of 256 (keys) + 256 (values) per layer, 18 layers.
    assert (details.block_count, details.head_count_kv, details.key_length) == (18, 1, 256)
    footprint = default_estimate(test_model_path)
    assert footprint.kv_cache_bytes == 4096 * 4 * 18 * 1 * (256 + 256) * 2 == 301_989_888
    activations = 512 * (4 * 640 + 2048) * 4
    scores = 512 * 4096 * 4 * 4  # a batch over one slot's context, 4 heads
    logits = 4 * 262_144 * 4  # a row per slot over the vocabulary
    assert footprint.graph_bytes == 64 * MIB + activations + scores + logits == 114_294_784
    assert footprint.size_bytes == 253_113_024 + 301_989_888 + 114_294_784


def test_qwen_estimate_from_its_header(instruct_model_path: Path) -> None:
    details = read_gguf_details(instruct_model_path)
    # Grouped-query attention: 2 key/value heads of 896 / 14 = 64 values, 24 layers.
    assert (details.block_count, details.head_count, details.head_count_kv) == (24, 14, 2)
    assert details.key_length is None  # not in this header: the embedding over the heads
    footprint = default_estimate(instruct_model_path)
    assert footprint.kv_cache_bytes == 4096 * 4 * 24 * 2 * (64 + 64) * 2 == 201_326_592
    activations = 512 * (4 * 896 + 4864) * 4
    scores = 512 * 4096 * 14 * 4
    logits = 4 * 151_936 * 4
    assert footprint.graph_bytes == 64 * MIB + activations + scores + logits == 204_281_856
    assert footprint.size_bytes == 491_400_064 + 201_326_592 + 204_281_856
    # A full embedding per layer (the estimate before the heads were read) is 3.5x too much.
    assert kv_cache_bytes(4096 * 4, without_heads(24, 896)) == 2 * 2 * 4096 * 4 * 24 * 896


def test_flash_attention_and_a_quantized_cache_shrink_the_estimate(
    test_model_path: Path,
) -> None:
    shape = shape_of(read_gguf_details(test_model_path))
    plain, quantized = (
        model_footprint(
            1000,
            shape,
            n_ctx=4096,
            parallel=4,
            n_batch=512,
            kv_cache_type=kind,
            flash_attention=flash,
        )
        for kind, flash in (("f16", False), ("q8_0", True))
    )
    assert quantized.kv_cache_bytes == plain.kv_cache_bytes * 34 // 64
    assert plain.graph_bytes - quantized.graph_bytes == 512 * 4096 * 4 * 4  # no scores
    assert plain.size_bytes > quantized.size_bytes


def test_the_graph_counts_in_the_plan_size_and_on_the_gpu_when_all_layers_go() -> None:
    footprint = ModelFootprint(
        weights_bytes=33 * GIB, block_count=32, kv_cache_bytes=GIB, graph_bytes=GIB
    )
    on_cpu = plan_gpu_layers("auto", footprint, NO_GPU)
    assert on_cpu.size_bytes == 35 * GIB and on_cpu.host_bytes == 35 * GIB
    on_gpu = plan_gpu_layers("auto", footprint, gpu(80))
    assert on_gpu.size_vram_bytes == 35 * GIB and on_gpu.host_bytes == 0


# -- the host memory budget ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("1073741824\n", GIB),
        ("max\n", None),  # cgroup v2: no limit
        ("9223372036854771712\n", None),  # cgroup v1's "unlimited"
        ("0\n", None),
        ("", None),
        ("garbage", None),
    ],
)
def test_cgroup_limit(text: str, limit: int | None) -> None:
    assert parse_cgroup_limit(text) == limit


def test_the_cgroup_files_of_this_process(tmp_path: Path) -> None:
    v2 = cgroup_limit_files("0::/kubepods/burstable/pod1/abc\n", tmp_path)
    assert v2[0] == tmp_path / "kubepods/burstable/pod1/abc/memory.max"
    v1 = cgroup_limit_files(
        "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n1:name=systemd:/docker/abc\n",
        tmp_path,
    )
    assert v1[0] == tmp_path / "memory/docker/abc/memory.limit_in_bytes"
    # A container's own cgroup is the namespace's root: "0::/" is the mount's root file.
    assert cgroup_limit_files("0::/\n", tmp_path) == [
        tmp_path / "memory.max",
        tmp_path / "memory/memory.limit_in_bytes",
    ]


def test_mem_available() -> None:
    meminfo = "MemTotal:       16000000 kB\nMemFree:  100 kB\nMemAvailable:    8000000 kB\n"
    assert parse_mem_available(meminfo) == 8_000_000 * 1024
    assert parse_mem_available("MemTotal: 1 kB\n") is None


def test_the_budget_is_the_limit_less_the_reserve_else_what_is_available() -> None:
    reserve = 256 * MIB
    assert memory_budget(2 * GIB, 64 * GIB, reserve) == 2 * GIB - reserve  # the limit wins
    assert memory_budget(None, 8 * GIB, reserve) == 8 * GIB - reserve
    assert memory_budget(None, None, reserve) is None
    assert memory_budget(100 * MIB, None, reserve) == 0  # never negative
