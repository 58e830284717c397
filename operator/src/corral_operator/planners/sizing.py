"""A ModelServer sized from its models: the memory one replica needs, how many GPUs, and which
nodes can hold it.

The pull Job records a GGUF's facts in its Model's status (layers, heads and key/value heads,
key and value lengths, what the weights and each layer take). From them and the server's
context, parallel slots and KV cache type, one replica needs, as Ollama estimates a load:

- the weights (all the tensors);
- a KV cache for every slot: context x slots positions (the parallel ones and those
  ``spec.priority.reservedSlots`` keeps for interactive requests on top), per layer key/value
  heads x (key + value length) values of the cache's element type;
- a compute graph allowance for one batch: the larger of the layers' activations with the
  attention scores of a batch over a slot's context (none with flash attention) and the output
  head's batch of logits, a row of logits per slot, and the context's own allocations. It is
  never below the runtime's ``gpu.compute_graph_bytes``, so a pod sized here admits the model
  its runtime then estimates.

On GPU nodes (those labelled ``nvidia.com/gpu.memory`` by GPU feature discovery, in MiB per
GPU) the layers are split across the fewest GPUs of one node that hold them, each GPU also
holding the output tensors, the graph and CUDA's own overhead (an upper bound: llama.cpp keeps
those on one of them); the pods then ask for that many GPUs and only nodes whose GPUs are at
least that large. A server that fits on no labelled node says so with the numbers.

Explicit resources in the spec win: a set ``gpus`` is kept (and the per-GPU need is checked
against the nodes), a set ``memory`` is kept. Everything here is pure.

Unset ``parallel`` is the slots the pod's runtime will choose: from the pod's memory budget,
and where the model is offloaded to GPUs, no more than one GPU's memory holds by the same rule
(the runtime's ``slots_for`` with its free VRAM less ``VRAM_RESERVE_BYTES``). That GPU is the
smallest the pod may be scheduled onto, and which GPUs those are depends on the estimate the
slots make, so the placement is made again until the GPU memory it plans for is settled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from corral_operator.builders.memory import (
    PROCESS_RESERVE_BYTES,
    PROCESS_RESERVE_SHARE,
    memory_budget,
    memory_bytes,
)
from corral_operator.builders.runtime import GPU_MEMORY_LABEL, PodSizing

DOES_NOT_FIT = "DoesNotFit"  # the Ready condition's reason for a server no node can hold
MIB = 1024 * 1024
GIB = 1024 * MIB

# The runtime's defaults (corral_runtime.settings and engine.scheduling) where a server sets none:
# slots from the memory budget (``default_parallel``), else from a token budget.
DEFAULT_CONTEXT = 4096
DEFAULT_BATCH = 512
KV_BUDGET_DIVISOR = 4
MAX_DEFAULT_PARALLEL = 16
KV_TOKEN_BUDGET = 16384
MAX_GPUS = 16  # the CRD's bound on spec.resources.gpus

# Bytes per cached value of each KV cache type, as (numerator, denominator): ggml's q8_0 and
# q4_0 store blocks of 32 values in 34 and 18 bytes.
KV_VALUE_BYTES = {"f16": (2, 1), "q8_0": (34, 32), "q4_0": (18, 32)}
# The llama.cpp context's allocations beside its buffers (graph metadata, samplers, the batch).
CONTEXT_OVERHEAD_BYTES = 64 * MIB
# What the CUDA runtime, cuBLAS and the driver take on each GPU before any buffer (Ollama keeps
# about 457 MiB free per CUDA GPU for the same reason).
GPU_OVERHEAD_BYTES = 512 * MIB
# The VRAM a pod's runtime keeps free when it plans a load (corral_runtime.gpu).
VRAM_RESERVE_BYTES = 512 * MIB
_F32 = 4


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What a Model's status says about the memory its model takes."""

    block_count: int
    embedding_length: int
    head_count: int
    kv_heads: int
    key_length: int
    value_length: int
    feed_forward_length: int
    vocab_size: int
    weights_bytes: int
    layer_bytes: int
    output_bytes: int

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> ModelFacts | None:
        """The facts of a Model's status; None for a Model pulled before they were recorded
        (or from a file without a readable tensor table): nothing is sized from it."""

        def number(key: str) -> int:
            value = status.get(key)
            return value if isinstance(value, int) and value > 0 else 0

        blocks, weights = number("blockCount"), number("weightsBytes")
        if not blocks or not weights:
            return None
        embedding = number("embeddingLength")
        heads = number("headCount") or 1
        head_dim = embedding // heads
        return cls(
            block_count=blocks,
            embedding_length=embedding,
            head_count=heads,
            kv_heads=number("headCountKV") or heads,
            key_length=number("keyLength") or head_dim,
            value_length=number("valueLength") or head_dim,
            feed_forward_length=number("feedForwardLength") or 4 * embedding,
            vocab_size=number("vocabSize"),
            weights_bytes=weights,
            layer_bytes=number("layerBytes") or weights // blocks,
            output_bytes=number("outputBytes"),
        )


@dataclass(frozen=True, slots=True)
class ServingShape:
    """How a server runs a model: context per slot, slots, KV cache type, flash attention."""

    context: int = DEFAULT_CONTEXT
    parallel: int = 1
    kv_cache_type: str = "f16"
    flash_attention: bool = False
    n_batch: int = DEFAULT_BATCH


def serving_shape(
    runtime: Mapping[str, Any],
    model_context: int | None = None,
    facts: ModelFacts | None = None,
    budget: int | None = None,
    vram: int | None = None,
) -> ServingShape:
    """The shape a ModelServer's ``spec.runtime`` gives a model: a Model's own num_ctx wins over
    the server's contextLength; unset parallel is the runtime's choice (``default_parallel``:
    from the model's facts, the pod's memory ``budget`` and the ``vram`` of its GPU, where
    known)."""
    context = int(model_context or runtime.get("contextLength") or DEFAULT_CONTEXT)
    kv_type = str(runtime.get("kvCacheType") or "f16")
    # A quantized cache turns flash attention on unless it is explicitly off (the runtime's rule).
    flash = runtime.get("flashAttention")
    shape = ServingShape(
        context=context,
        kv_cache_type=kv_type,
        flash_attention=bool(flash) if flash is not None else kv_type != "f16",
    )
    parallel = runtime.get("parallel")
    if parallel:
        return replace(shape, parallel=int(parallel))
    return replace(shape, parallel=default_parallel(facts, shape, budget, vram))


def reserved_slots(spec: Mapping[str, Any]) -> int:
    """The slots a pod's runtime keeps for interactive requests beyond the parallel ones
    (``spec.priority.reservedSlots``, its CORRAL_PRIORITY_RESERVED_SLOTS): each holds a
    context's KV cache too, so the estimate counts them."""
    return int((spec.get("priority") or {}).get("reservedSlots") or 0)


def default_parallel(
    facts: ModelFacts | None, shape: ServingShape, budget: int | None, vram: int | None = None
) -> int:
    """The slots a pod's runtime gives a model when the server sets none, by the runtime's rule
    (``engine.manager.slots_for``): as many as hold one slot's KV cache for the full context
    each within a ``1 / KV_BUDGET_DIVISOR`` share of the pod's memory budget and within what
    the weights and the compute graph leave of it, 1 to ``MAX_DEFAULT_PARALLEL``; without a
    budget, the runtime's fallback, the slots' KV within a token budget. Where the model is
    offloaded to a GPU with ``vram`` bytes to plan against, no more than that memory holds by
    the same rule. Without facts, the token budget alone."""
    fallback = max(1, min(MAX_DEFAULT_PARALLEL, KV_TOKEN_BUDGET // max(1, shape.context)))
    if facts is None:
        return fallback
    per_slot = kv_cache_bytes(facts, replace(shape, parallel=1))
    fixed = facts.weights_bytes + graph_bytes(facts, replace(shape, parallel=MAX_DEFAULT_PARALLEL))
    slots = fallback if budget is None else parallel_for_memory(per_slot, budget, fixed)
    if vram is not None:
        slots = min(slots, parallel_for_memory(per_slot, vram, fixed))
    return slots


def parallel_for_memory(per_slot: int, memory: int, fixed: int) -> int:
    """The runtime's ``engine.scheduling.parallel_for_memory``: slots of ``per_slot`` bytes
    within a ``1 / KV_BUDGET_DIVISOR`` share of ``memory`` and within what ``fixed`` (weights,
    graph) leaves of it, 1 to ``MAX_DEFAULT_PARALLEL``."""
    room = min(memory // KV_BUDGET_DIVISOR, memory - fixed)
    return max(1, min(MAX_DEFAULT_PARALLEL, room // max(1, per_slot)))


@dataclass(frozen=True, slots=True)
class Estimate:
    """One loaded model's memory: weights, KV cache and compute graph, and its layers."""

    weights_bytes: int
    kv_cache_bytes: int
    graph_bytes: int
    block_count: int
    layer_bytes: int  # one layer's weights and its share of the KV cache
    output_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.graph_bytes

    def per_gpu_bytes(self, gpus: int) -> int:
        """What each of ``gpus`` GPUs holds with the layers split evenly between them."""
        layers = math.ceil(self.block_count / max(1, gpus))
        return layers * self.layer_bytes + self.output_bytes + self.graph_bytes + GPU_OVERHEAD_BYTES


def kv_cache_bytes(facts: ModelFacts, shape: ServingShape) -> int:
    """Every slot's KV cache: context x parallel positions in each layer."""
    numerator, denominator = KV_VALUE_BYTES[shape.kv_cache_type]
    per_position = facts.kv_heads * (facts.key_length + facts.value_length)
    tokens = shape.context * shape.parallel
    return tokens * facts.block_count * per_position * numerator // denominator


def graph_bytes(facts: ModelFacts, shape: ServingShape) -> int:
    """The compute buffer of one batch, all f32: the larger of the layers' working set
    (activations and the attention scores over a slot's context) and the output head's (a
    batch of logit rows: what dominates for models with large vocabularies, where llama.cpp
    reserves it), plus a row of logits kept per slot and the context's own allocations."""
    batch = shape.n_batch
    activations = batch * (4 * facts.embedding_length + facts.feed_forward_length) * _F32
    scores = 0 if shape.flash_attention else batch * shape.context * facts.head_count * _F32
    head = batch * (facts.embedding_length + facts.vocab_size) * _F32
    kept_logits = shape.parallel * facts.vocab_size * _F32
    return CONTEXT_OVERHEAD_BYTES + max(activations + scores, head) + kept_logits


def estimate(facts: ModelFacts, shape: ServingShape) -> Estimate:
    kv = kv_cache_bytes(facts, shape)
    return Estimate(
        weights_bytes=facts.weights_bytes,
        kv_cache_bytes=kv,
        graph_bytes=graph_bytes(facts, shape),
        block_count=facts.block_count,
        layer_bytes=facts.layer_bytes + kv // facts.block_count,
        output_bytes=facts.output_bytes,
    )


def memory_limit_for(need_bytes: int) -> int:
    """The container limit whose budget (builders.memory: the limit less the process's reserve)
    holds ``need_bytes`` of models."""
    return math.ceil((need_bytes + PROCESS_RESERVE_BYTES) / (1 - float(PROCESS_RESERVE_SHARE)))


@dataclass(frozen=True, slots=True)
class GpuNode:
    """A node GPU feature discovery labelled: its GPUs' memory and how many it has."""

    name: str
    gpu_memory_bytes: int
    gpus: int


def gpu_nodes(nodes: Iterable[Mapping[str, Any]], resource: str) -> list[GpuNode]:
    """Nodes with a GPU memory label and GPUs of ``resource`` in their capacity."""
    found = []
    for node in nodes:
        label = ((node.get("metadata") or {}).get("labels") or {}).get(GPU_MEMORY_LABEL)
        capacity = ((node.get("status") or {}).get("capacity") or {}).get(resource)
        try:
            memory_mib, count = int(str(label)), int(str(capacity))
        except ValueError:
            continue
        if memory_mib > 0 and count > 0:
            found.append(GpuNode(str(node["metadata"]["name"]), memory_mib * MIB, count))
    return found


@dataclass(frozen=True, slots=True)
class Placement:
    """The decision: the pod's sizing for the estimate ``need``, or why it fits nowhere."""

    sizing: PodSizing
    need: Estimate
    problem: str | None = None

    @property
    def status(self) -> dict[str, int]:
        """The ModelServer's ``status.sizing``: the estimate, and the GPUs it was placed on."""
        doc = {
            "memoryBytes": self.need.total_bytes,
            "weightsBytes": self.need.weights_bytes,
            "kvCacheBytes": self.need.kv_cache_bytes,
            "graphBytes": self.need.graph_bytes,
        }
        if self.sizing.gpus:
            doc["gpus"] = self.sizing.gpus
            doc["perGpuBytes"] = self.need.per_gpu_bytes(self.sizing.gpus)
        return doc


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def fewest_gpus(need: Estimate, nodes: Sequence[GpuNode], limit: int = MAX_GPUS) -> int | None:
    """The fewest GPUs of one node that hold the model's layers; None when no node can."""
    for gpus in range(1, limit + 1):
        per_gpu = need.per_gpu_bytes(gpus)
        if any(n.gpus >= gpus and n.gpu_memory_bytes >= per_gpu for n in nodes):
            return gpus
    return None


def place(
    need: Estimate,
    resources: Mapping[str, Any],
    nodes: Sequence[GpuNode],
    default_memory: str,
) -> Placement:
    """Size one replica for ``need`` (the largest of the server's models) on ``nodes`` (the GPU
    nodes of the cluster), keeping what ``resources`` (the spec's) sets explicitly."""
    explicit_gpus = resources.get("gpus")
    if explicit_gpus is None:
        gpus = fewest_gpus(need, nodes) if nodes else 0
    else:
        gpus = int(explicit_gpus)
    memory = None
    if resources.get("memory") is None and not gpus:
        # The operator's default stays the floor: small models keep the room it gives.
        floor = memory_bytes(default_memory) or 0
        memory = str(max(floor, memory_limit_for(need.total_bytes)))
    if gpus is None:
        largest = max(nodes, key=lambda n: (n.gpu_memory_bytes, n.gpus))
        return Placement(
            PodSizing(memory=memory),
            need,
            problem=(
                f"needs {_gib(need.total_bytes)} (weights {_gib(need.weights_bytes)}, KV cache "
                f"{_gib(need.kv_cache_bytes)}, graph {_gib(need.graph_bytes)}); even split "
                f"over {largest.gpus} GPUs it needs {_gib(need.per_gpu_bytes(largest.gpus))} "
                f"per GPU, and the largest GPUs ({largest.name}) have "
                f"{_gib(largest.gpu_memory_bytes)}"
            ),
        )
    if not gpus:
        return Placement(PodSizing(memory=memory, gpus=None if explicit_gpus is None else 0), need)
    per_gpu = need.per_gpu_bytes(gpus)
    sizing = PodSizing(
        memory=memory,
        gpus=gpus,
        min_gpu_memory_mib=math.ceil(per_gpu / MIB) if nodes else None,
        tensor_split=(1,) * gpus if gpus > 1 else (),
        gpu_layers=need.block_count + 1 if gpus > 1 else None,  # the output head is one more
    )
    if nodes and not any(n.gpus >= gpus and n.gpu_memory_bytes >= per_gpu for n in nodes):
        return Placement(
            sizing,
            need,
            problem=(
                f"needs {_gib(per_gpu)} per GPU on {gpus} GPUs (of {_gib(need.total_bytes)} "
                f"in all), and no node has {gpus} GPUs that large (the largest have "
                f"{_gib(max(n.gpu_memory_bytes for n in nodes))})"
            ),
        )
    return Placement(sizing, need)


def size_server(
    spec: Mapping[str, Any],
    models: Mapping[str, Mapping[str, Any] | None],
    nodes: Iterable[Mapping[str, Any]],
    default_memory: str,
) -> Placement | None:
    """The placement of a ModelServer's replicas; None when no Model says enough to size it
    (the spec's resources and the operator's defaults apply unchanged).

    A model's default slots come from the pod's memory budget, and a pod without explicit
    memory gets a limit sized from the estimate, whose budget may allow more slots: the
    placement is computed again with the budget of the limit it chose until that budget stops
    changing (slots only grow with the budget and are capped, so this ends), and the estimate
    is the one the pod's runtime makes with the budget it is given. Likewise a pod on GPUs gets
    no more slots than the smallest GPU it may land on holds (``planned_vram``), computed again
    until that GPU memory stops changing (fewer slots only widen the nodes that fit, and the
    rounds are bounded besides).
    """
    resources = spec.get("resources") or {}
    resource = str(resources.get("gpuResourceName") or "nvidia.com/gpu")
    labelled = gpu_nodes(nodes, resource)
    budget = memory_budget(resources.get("memory") or default_memory)
    vram: int | None = None
    offloads = offloads_layers(spec.get("runtime") or {})
    for _ in range(2 * MAX_DEFAULT_PARALLEL + 2):
        placement = _place_with_budget(spec, models, labelled, default_memory, budget, vram)
        if placement is None:
            return None
        grown = (
            budget if placement.sizing.memory is None else memory_budget(placement.sizing.memory)
        )
        planned = planned_vram(placement.sizing, labelled) if offloads else None
        if grown == budget and planned == vram:
            return placement
        budget, vram = grown, planned
    return placement


def offloads_layers(runtime: Mapping[str, Any]) -> bool:
    """Whether a server's pods offload layers to their GPUs: unless ``gpuLayers`` is 0 (the
    runtime's ``gpu_layers``; "auto" and any other count offload)."""
    return str(runtime.get("gpuLayers", "auto")).strip() != "0"


def planned_vram(sizing: PodSizing, nodes: Sequence[GpuNode]) -> int | None:
    """The VRAM a pod sized by ``sizing`` plans its default slots against: the memory of the
    smallest GPU it may be scheduled onto (a node with enough GPUs, none below
    ``min_gpu_memory_mib``) less the runtime's reserve, as its runtime takes its largest GPU's
    free memory and an idle GPU has nearly all of it free. None where it has no GPUs or none of
    the labelled nodes can take it (GPU memory unknown: no cap)."""
    if not sizing.gpus:
        return None
    least = (sizing.min_gpu_memory_mib or 0) * MIB
    fitting = [
        n.gpu_memory_bytes for n in nodes if n.gpus >= sizing.gpus and n.gpu_memory_bytes >= least
    ]
    return max(0, min(fitting) - VRAM_RESERVE_BYTES) if fitting else None


def _place_with_budget(
    spec: Mapping[str, Any],
    models: Mapping[str, Mapping[str, Any] | None],
    nodes: Sequence[GpuNode],
    default_memory: str,
    budget: int | None,
    vram: int | None,
) -> Placement | None:
    """``size_server``'s placement where the pod's memory budget is ``budget`` and the VRAM its
    runtime plans against is ``vram`` (None: no GPU, or its memory is unknown)."""
    runtime = spec.get("runtime") or {}
    estimates = []
    for model in models.values():
        facts = ModelFacts.from_status((model or {}).get("status") or {})
        if facts is None:
            continue
        num_ctx = (((model or {}).get("spec") or {}).get("parameters") or {}).get("numCtx")
        shape = serving_shape(runtime, num_ctx, facts, budget, vram)
        slots = shape.parallel + reserved_slots(spec)
        estimates.append(estimate(facts, replace(shape, parallel=slots)))
    if not estimates:
        return None
    largest = max(estimates, key=lambda e: e.total_bytes)
    return place(largest, spec.get("resources") or {}, nodes, default_memory)
