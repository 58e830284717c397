"""What a model needs and what the machine has: pure decisions plus thin probes.

``gpu_layers`` is ``"auto"`` (as many layers as fit the free VRAM, the rest on the CPU, like
Ollama's hybrid mode), a number, or 0. The decision is a pure function of what the model needs
and what the machine has, so it is tested without a GPU; ``probe_gpu`` gathers the inputs (free
VRAM of every visible GPU, read again at each load). A model's need is ``model_size``: weights,
a KV cache for every slot, and a compute-graph allowance. The host memory the models may use
together is ``memory_budget``: the container's memory limit (its cgroup) less a reserve for the
process itself, else the machine's available memory; ``probe_memory_budget`` reads the files.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# VRAM kept free for the CUDA context, scratch buffers and fragmentation.
VRAM_RESERVE_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What the machine offers: whether llama.cpp can offload at all, and the free VRAM a plan
    may use (``plannable_vram`` of ``free_vram_per_gpu``), in bytes."""

    offload_supported: bool
    free_vram_bytes: int
    free_vram_per_gpu: tuple[int, ...] = ()

    @property
    def usable(self) -> bool:
        return self.offload_supported and self.free_vram_bytes > 0


NO_GPU = GpuInfo(offload_supported=False, free_vram_bytes=0)


@dataclass(frozen=True, slots=True)
class ModelFootprint:
    """What a model needs: its weights split into repeating layers plus the rest (embeddings,
    output head), the KV cache for the chosen context, which grows with each offloaded layer,
    and the compute graph's buffers (``graph_bytes``).
    """

    weights_bytes: int
    block_count: int
    kv_cache_bytes: int = 0
    graph_bytes: int = 0

    @property
    def size_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.graph_bytes

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

    @property
    def host_bytes(self) -> int:
        """What the model takes of the host's memory: what is not on a GPU."""
        return self.size_bytes - self.size_vram_bytes


def plan_gpu_layers(
    requested: Literal["auto"] | int, footprint: ModelFootprint, gpu: GpuInfo
) -> GpuPlan:
    """Decide the offload for one model.

    Layers are counted as llama.cpp counts them: ``block_count`` repeating layers plus one for the
    output head, so ``block_count + 1`` means "everything on the GPU". A negative number is
    "auto", as Ollama's ``num_gpu: -1`` (its default) is.
    """
    total_layers = footprint.block_count + 1
    size = footprint.size_bytes
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


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What a GGUF's header says about the memory a model takes beyond its weights: per layer,
    ``kv_heads`` key/value heads of ``key_length`` / ``value_length`` values each."""

    block_count: int
    embedding_length: int
    head_count: int
    kv_heads: int
    key_length: int
    value_length: int
    feed_forward_length: int
    vocab_size: int


def model_shape(
    *,
    block_count: int | None,
    embedding_length: int | None,
    head_count: int | None,
    head_count_kv: int | None,
    key_length: int | None,
    value_length: int | None,
    feed_forward_length: int | None,
    vocab_size: int | None,
) -> ModelShape:
    """A shape from header values, each possibly missing, with llama.cpp's defaults: the key and
    value lengths are the embedding over the heads, and the key/value heads the heads (no
    grouped-query attention). Without even a head count the cache is a full embedding per layer,
    as before the header was read: an estimate that errs on the side of fitting."""
    embedding = embedding_length or 0
    heads = head_count or 1
    kv_heads = head_count_kv or heads
    head_dim = embedding // heads
    return ModelShape(
        block_count=block_count or 0,
        embedding_length=embedding,
        head_count=heads,
        kv_heads=kv_heads,
        key_length=key_length or head_dim,
        value_length=value_length or head_dim,
        feed_forward_length=feed_forward_length or 4 * embedding,
        vocab_size=vocab_size or 0,
    )


# Bytes per cached value of each KV cache type, as (numerator, denominator): ggml's q8_0 and
# q4_0 store blocks of 32 values in 34 and 18 bytes.
_KV_VALUE_BYTES = {"f16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32)}


def kv_cache_bytes(tokens: int, shape: ModelShape, kv_cache_type: str = "f16") -> int:
    """A KV cache of ``tokens`` positions (n_ctx times parallel: each slot has its own context):
    per layer and position, ``kv_heads`` keys and values of ``kv_cache_type``."""
    numerator, denominator = _KV_VALUE_BYTES[kv_cache_type]
    per_position = shape.kv_heads * (shape.key_length + shape.value_length)
    return tokens * shape.block_count * per_position * numerator // denominator


# The llama.cpp context's own allocations beside its buffers (graph metadata, samplers, the
# batch, the tokenizer's tables), measured at about 50 MiB a model with the test models.
CONTEXT_OVERHEAD_BYTES = 64 * 1024 * 1024
_F32 = 4


def compute_graph_bytes(
    shape: ModelShape, *, n_ctx: int, parallel: int, n_batch: int, flash_attention: bool
) -> int:
    """An allowance for the compute graph of one batch: its activations (hidden state, Q/K/V,
    feed-forward), the attention scores of a batch over one slot's context (not materialized with
    flash attention), and a row of logits per slot, all f32, plus the context's overhead."""
    activations = n_batch * (4 * shape.embedding_length + shape.feed_forward_length) * _F32
    scores = 0 if flash_attention else n_batch * n_ctx * shape.head_count * _F32
    logits = parallel * shape.vocab_size * _F32
    return CONTEXT_OVERHEAD_BYTES + activations + scores + logits


def model_footprint(
    weights_bytes: int,
    shape: ModelShape,
    *,
    n_ctx: int,
    parallel: int,
    n_batch: int,
    kv_cache_type: str,
    flash_attention: bool,
) -> ModelFootprint:
    """A loaded model's estimate: weights, a KV cache for every slot, a compute graph."""
    return ModelFootprint(
        weights_bytes=weights_bytes,
        block_count=shape.block_count,
        kv_cache_bytes=kv_cache_bytes(n_ctx * parallel, shape, kv_cache_type),
        graph_bytes=compute_graph_bytes(
            shape, n_ctx=n_ctx, parallel=parallel, n_batch=n_batch, flash_attention=flash_attention
        ),
    )


def parse_free_vram_per_gpu(nvidia_smi_output: str) -> tuple[int, ...]:
    """Free VRAM in bytes of every GPU from ``nvidia-smi --query-gpu=memory.free
    --format=csv,noheader,nounits`` (one line per GPU, in MiB)."""
    return tuple(
        int(float(line)) * 1024 * 1024 for line in nvidia_smi_output.splitlines() if line.strip()
    )


def plannable_vram(free_per_gpu: Sequence[int]) -> int:
    """The VRAM one model's layers may be planned against: the largest single GPU's free memory.

    Not the sum: corral gives llama.cpp no tensor split, so how it spreads layers over several
    GPUs is its own choice, and a plan against the sum could offload more than the GPUs it picks
    hold. The largest GPU is a bound every spread satisfies.
    """
    return max(free_per_gpu, default=0)


def probe_gpu(offload_supported: bool) -> GpuInfo:
    """Ask the machine (every visible GPU, now). ``offload_supported`` comes from llama.cpp (a
    CPU-only build says no). Called at each load: models loaded since take their VRAM."""
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
        per_gpu = parse_free_vram_per_gpu(result.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        per_gpu = ()
    return GpuInfo(
        offload_supported=True, free_vram_bytes=plannable_vram(per_gpu), free_vram_per_gpu=per_gpu
    )


# -- host memory -------------------------------------------------------------------------------

# A cgroup limit at or above this is no limit: cgroup v1 writes "unlimited" as the largest
# page-aligned 63-bit number (9223372036854771712), and no machine has an exbibyte.
UNLIMITED_BYTES = 1 << 60
CGROUP_ROOT = Path("/sys/fs/cgroup")


def parse_cgroup_limit(text: str) -> int | None:
    """A memory limit from ``memory.max`` (v2) or ``memory.limit_in_bytes`` (v1): bytes, or None
    for none ("max", a huge number, or text that is not a number)."""
    value = text.strip()
    if not value.isdigit():
        return None
    limit = int(value)
    return limit if 0 < limit < UNLIMITED_BYTES else None


def cgroup_limit_files(proc_cgroup: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """The files that may hold this process's memory limit, from ``/proc/self/cgroup``: its own
    cgroup's (v2 ``0::/path``, v1 ``N:…memory…:/path``), then the mount's root (in a container
    the cgroup namespace makes its own cgroup the root, and the line says ``/``)."""
    files: list[Path] = []
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        relative = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            files.append(root / relative / "memory.max")
        elif "memory" in controllers.split(","):
            files.append(root / "memory" / relative / "memory.limit_in_bytes")
    files += [root / "memory.max", root / "memory" / "memory.limit_in_bytes"]
    return list(dict.fromkeys(files))


def parse_mem_available(meminfo: str) -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (the kernel's estimate of what can be
    allocated without swapping), or None where the kernel does not say."""
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemAvailable":
            fields = rest.split()
            if fields and fields[0].isdigit():
                return int(fields[0]) * 1024
    return None


def memory_budget(cgroup_limit: int | None, mem_available: int | None, reserve: int) -> int | None:
    """The host memory loaded models may take together: the container's limit (what its OOM
    killer enforces) less ``reserve`` for the server itself, else the machine's available
    memory less the reserve (the server already runs: what it holds is not available, but
    what it will allocate per request is); None when neither is known (no budget)."""
    total = cgroup_limit if cgroup_limit is not None else mem_available
    if total is None:
        return None
    return max(0, total - reserve)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def probe_cgroup_limit() -> int | None:
    """This process's cgroup memory limit (the first file of ``cgroup_limit_files`` that says
    one), or None."""
    for path in cgroup_limit_files(_read(Path("/proc/self/cgroup")) or ""):
        text = _read(path)
        if text is not None:
            limit = parse_cgroup_limit(text)
            if limit is not None:
                return limit
    return None


def probe_memory_budget(reserve: int) -> int | None:
    """``memory_budget`` from this machine's files."""
    meminfo = _read(Path("/proc/meminfo"))
    return memory_budget(
        probe_cgroup_limit(), parse_mem_available(meminfo) if meminfo else None, reserve
    )
