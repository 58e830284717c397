"""How many of a model's layers go to the GPU: a pure decision plus a probe of the machine.

``gpu_layers`` is ``"auto"`` (as many layers as fit the free VRAM, the rest on the CPU, like
Ollama's hybrid mode), a number, or 0. The decision is a pure function of what the model needs
and what the machine has, so it is tested without a GPU; ``probe_gpu`` gathers the inputs.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

# VRAM kept free for the CUDA context, scratch buffers and fragmentation.
VRAM_RESERVE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What the machine offers: whether llama.cpp can offload at all, and free VRAM in bytes."""

    offload_supported: bool
    free_vram_bytes: int

    @property
    def usable(self) -> bool:
        return self.offload_supported and self.free_vram_bytes > 0


NO_GPU = GpuInfo(offload_supported=False, free_vram_bytes=0)


@dataclass(frozen=True, slots=True)
class ModelFootprint:
    """What a model needs: its weights split into repeating layers plus the rest (embeddings,
    output head), and the KV cache for the chosen context, which grows with each offloaded layer.
    """

    weights_bytes: int
    block_count: int
    kv_cache_bytes: int = 0

    @property
    def bytes_per_layer(self) -> int:
        layers = max(self.block_count, 1)
        return (self.weights_bytes + self.kv_cache_bytes) // (layers + 1)


@dataclass(frozen=True, slots=True)
class GpuPlan:
    """The decision: layers to offload (llama.cpp's n_gpu_layers) and the VRAM they take."""

    gpu_layers: int
    size_bytes: int
    size_vram_bytes: int


def plan_gpu_layers(
    requested: Literal["auto"] | int, footprint: ModelFootprint, gpu: GpuInfo
) -> GpuPlan:
    """Decide the offload for one model.

    Layers are counted as llama.cpp counts them: ``block_count`` repeating layers plus one for the
    output head, so ``block_count + 1`` means "everything on the GPU". A negative number is
    "auto", as Ollama's ``num_gpu: -1`` (its default) is.
    """
    total_layers = footprint.block_count + 1
    size = footprint.weights_bytes + footprint.kv_cache_bytes
    if not gpu.usable:
        return GpuPlan(gpu_layers=0, size_bytes=size, size_vram_bytes=0)
    if requested == "auto" or requested < 0:
        budget = gpu.free_vram_bytes - VRAM_RESERVE_BYTES
        per_layer = max(footprint.bytes_per_layer, 1)
        layers = max(0, min(total_layers, budget // per_layer))
    else:
        layers = max(0, min(total_layers, requested))
    vram = size if layers == total_layers else layers * footprint.bytes_per_layer
    return GpuPlan(gpu_layers=layers, size_bytes=size, size_vram_bytes=min(vram, size))


# Bytes per cached value of each KV cache type, as (numerator, denominator): ggml's q8_0 and
# q4_0 store blocks of 32 values in 34 and 18 bytes.
_KV_VALUE_BYTES = {"f16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32)}


def kv_cache_bytes(
    n_ctx: int, block_count: int, embedding_length: int, kv_cache_type: str = "f16"
) -> int:
    """An upper-bound estimate of a KV cache: K and V, one row per layer per position, of
    ``kv_cache_type`` values.

    Models with grouped-query attention need less; the estimate errs on the side of fitting.
    """
    numerator, denominator = _KV_VALUE_BYTES[kv_cache_type]
    return 2 * n_ctx * block_count * embedding_length * numerator // denominator


def parse_free_vram(nvidia_smi_output: str) -> int:
    """Free VRAM in bytes of the first GPU from ``nvidia-smi --query-gpu=memory.free
    --format=csv,noheader,nounits`` (one line per GPU, in MiB)."""
    for line in nvidia_smi_output.splitlines():
        line = line.strip()
        if line:
            return int(float(line)) * 1024 * 1024
    return 0


def probe_gpu(offload_supported: bool) -> GpuInfo:
    """Ask the machine. ``offload_supported`` comes from llama.cpp (a CPU-only build says no)."""
    if not offload_supported:
        return NO_GPU
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return GpuInfo(offload_supported=True, free_vram_bytes=0)
    try:
        result = subprocess.run(
            [smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        free = parse_free_vram(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        free = 0
    return GpuInfo(offload_supported=True, free_vram_bytes=free)
