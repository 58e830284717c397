"""The estimate a ModelServer's pods are sized from, and where they are placed, for the shapes of
Llama 3.1 8B and 70B (Q4_K_M) as their Models' status states them."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pytest

from corral_operator.builders.memory import memory_budget
from corral_operator.planners.modelserver import plan_modelserver
from corral_operator.planners.sizing import (
    DOES_NOT_FIT,
    GIB,
    GPU_OVERHEAD_BYTES,
    MIB,
    GpuNode,
    ModelFacts,
    ServingShape,
    default_parallel,
    estimate,
    gpu_nodes,
    kv_cache_bytes,
    place,
    reserved_slots,
    serving_shape,
    size_server,
)
from corral_operator.settings import OperatorSettings
from tests.unit.operator.factories import model, server

pytestmark = pytest.mark.unit

# The Model status the pull Job writes for each (tests/unit/test_sizing_from_gguf.py checks that a
# GGUF with these headers gives these facts).
LLAMA_8B: dict[str, int] = {
    "blockCount": 32,
    "embeddingLength": 4096,
    "headCount": 32,
    "headCountKV": 8,
    "feedForwardLength": 14336,
    "vocabSize": 128256,
    "weightsBytes": 4_912_898_304,
    "layerBytes": 138_936_320,
    "outputBytes": 726_458_624,
}
LLAMA_70B: dict[str, int] = {
    "blockCount": 80,
    "embeddingLength": 8192,
    "headCount": 64,
    "headCountKV": 8,
    "feedForwardLength": 28672,
    "vocabSize": 128256,
    "weightsBytes": 42_470_588_672,
    "layerBytes": 544_079_872,
    "outputBytes": 1_452_916_992,
}

# Gemma 3 270M Q4_K_M, the test model: one KV head of 256 + 256 values in 18 layers.
GEMMA_270M: dict[str, int] = {
    "blockCount": 18,
    "embeddingLength": 640,
    "headCount": 4,
    "headCountKV": 1,
    "keyLength": 256,
    "valueLength": 256,
    "feedForwardLength": 2048,
    "vocabSize": 262144,
    "weightsBytes": 253_000_000,
    "layerBytes": 7_000_000,
    "outputBytes": 127_000_000,
}


def _facts(status: dict[str, int]) -> ModelFacts:
    facts = ModelFacts.from_status(status)
    assert facts is not None
    return facts


def _node(name: str, gpu_mib: int, gpus: int) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"nvidia.com/gpu.memory": str(gpu_mib)}},
        "status": {"capacity": {"nvidia.com/gpu": str(gpus), "cpu": "32"}},
    }


class TestEstimate:
    def test_kv_cache_is_context_times_slots_times_kv_heads_times_head_dims(self) -> None:
        facts = _facts(LLAMA_8B)
        # 8192 positions x 32 layers x 8 KV heads x (128 + 128) values x 2 bytes = 1 GiB.
        assert kv_cache_bytes(facts, ServingShape(context=8192, parallel=1)) == GIB
        assert kv_cache_bytes(facts, ServingShape(context=4096, parallel=2)) == GIB
        # q8_0: 34 bytes per 32 values; q4_0: 18.
        assert kv_cache_bytes(facts, ServingShape(8192, 1, "q8_0")) == GIB * 34 // 64
        assert kv_cache_bytes(facts, ServingShape(8192, 1, "q4_0")) == GIB * 18 // 64

    def test_head_dims_default_to_the_embedding_over_the_heads(self) -> None:
        explicit = _facts({**LLAMA_8B, "keyLength": 128, "valueLength": 128})
        assert explicit == _facts(LLAMA_8B)
        wider = _facts({**LLAMA_8B, "keyLength": 256, "valueLength": 256})
        shape = ServingShape(8192, 1)
        assert kv_cache_bytes(wider, shape) == 2 * kv_cache_bytes(explicit, shape)

    def test_the_total_is_weights_kv_cache_and_graph(self) -> None:
        need = estimate(_facts(LLAMA_8B), ServingShape(context=8192, parallel=1))
        assert need.weights_bytes == LLAMA_8B["weightsBytes"]
        assert need.total_bytes == need.weights_bytes + need.kv_cache_bytes + need.graph_bytes
        # The attention scores of a 512-token batch over 8192 positions, 32 heads, f32 (512 MiB)
        # outweigh the output head's batch of logits (about 260 MB) for this shape.
        assert 512 * MIB < need.graph_bytes < 700 * MIB

    def test_flash_attention_leaves_out_the_scores(self) -> None:
        facts = _facts(LLAMA_8B)
        plain = estimate(facts, ServingShape(context=32768, parallel=1))
        flash = estimate(facts, ServingShape(context=32768, parallel=1, flash_attention=True))
        assert plain.graph_bytes - flash.graph_bytes > 1.5 * GIB
        # Without the scores, the batch of logit rows is the larger part.
        assert flash.graph_bytes >= 512 * (4096 + 128256) * 4

    def test_a_model_without_facts_sizes_nothing(self) -> None:
        assert ModelFacts.from_status({"sizeBytes": 1, "contextLength": 8192}) is None
        spec = {"models": ["old"], "resources": {}}
        assert size_server(spec, {"old": model("old", {"sizeBytes": 5})}, [], "2Gi") is None


class TestServingShape:
    def test_the_runtimes_defaults(self) -> None:
        assert serving_shape({}) == ServingShape(context=4096, parallel=4)
        assert serving_shape({"contextLength": 32768}).parallel == 1
        assert serving_shape({"contextLength": 8192, "parallel": 3}).parallel == 3

    def test_a_models_num_ctx_wins_over_the_servers(self) -> None:
        assert serving_shape({"contextLength": 2048}, model_context=16384).context == 16384

    def test_a_quantized_cache_turns_flash_attention_on_unless_it_is_off(self) -> None:
        assert serving_shape({"kvCacheType": "q8_0"}).flash_attention is True
        assert serving_shape({}).flash_attention is False
        assert serving_shape({"flashAttention": True}).flash_attention is True


class TestDefaultSlots:
    """A server without ``parallel``: its pods' slots come from their memory budget, by the
    runtime's rule (a full context's KV cache each within a quarter of the budget)."""

    def test_slots_come_from_the_memory_budget_and_the_kv_cache_per_slot(self) -> None:
        facts = _facts(LLAMA_8B)  # 512 MiB of f16 cache a slot at 4096 tokens
        assert serving_shape({}, facts=facts, budget=16 * GIB).parallel == 8
        assert serving_shape({}, facts=facts, budget=64 * GIB).parallel == 16
        assert serving_shape({"contextLength": 16384}, facts=facts, budget=16 * GIB).parallel == 2
        assert serving_shape({"kvCacheType": "q8_0"}, facts=facts, budget=16 * GIB).parallel == 15
        # The weights and the graph (about 5 GiB) leave room for two slots in 6 GiB, one in 5.5.
        assert serving_shape({}, facts=facts, budget=6 * GIB).parallel == 2
        assert serving_shape({}, facts=facts, budget=11 * GIB // 2).parallel == 1
        # An explicit count wins; without facts or a budget, the token budget decides.
        assert serving_shape({"parallel": 3}, facts=facts, budget=64 * GIB).parallel == 3
        assert serving_shape({}, facts=facts).parallel == 4

    @pytest.mark.parametrize("memory", [None, "8Gi", "32Gi"])
    @pytest.mark.parametrize("status", [LLAMA_8B, GEMMA_270M], ids=["8b", "270m"])
    def test_a_pods_estimate_has_the_slots_its_runtime_will_choose(
        self, memory: str | None, status: dict[str, int]
    ) -> None:
        resources = {} if memory is None else {"memory": memory}
        spec = {"models": ["m"], "resources": resources, "runtime": {}}
        placement = size_server(spec, {"m": model("m", status)}, [], "2Gi")
        assert placement is not None
        # The pod's runtime gets the budget of its limit (sized here, or explicit) ...
        budget = memory_budget(memory or placement.sizing.memory or "2Gi")
        facts = _facts(status)
        slots = default_parallel(facts, ServingShape(), budget)
        # ... and the estimate is that many slots' KV cache, within that budget.
        per_slot = kv_cache_bytes(facts, ServingShape(parallel=1))
        assert placement.need.kv_cache_bytes == slots * per_slot
        assert budget is not None and placement.need.total_bytes <= budget

    @pytest.mark.parametrize("runtime", [{"parallel": 2}, {}], ids=["explicit", "default"])
    def test_reserved_slots_add_their_kv_cache_on_top_of_the_parallel_ones(
        self, runtime: dict[str, int]
    ) -> None:
        # The runtime keeps spec.priority.reservedSlots beyond its parallel slots, each with a
        # whole context's cache (unset parallel: the default from the pod's budget, as above).
        spec = {"models": ["m"], "resources": {"memory": "16Gi"}, "runtime": runtime}
        reserving = {**spec, "priority": {"reservedSlots": 1}}
        models = {"m": model("m", LLAMA_8B)}
        plain = size_server(spec, models, [], "2Gi")
        reserved = size_server(reserving, models, [], "2Gi")
        assert plain is not None and reserved is not None
        facts = _facts(LLAMA_8B)
        per_slot = kv_cache_bytes(facts, ServingShape(parallel=1))
        shared = runtime.get("parallel") or default_parallel(
            facts, ServingShape(), memory_budget("16Gi")
        )
        assert plain.need.kv_cache_bytes == shared * per_slot
        assert reserved.need.kv_cache_bytes == (shared + 1) * per_slot
        assert reserved_slots(reserving) == 1 and reserved_slots(spec) == 0

    def test_gpu_memory_caps_the_slots_of_an_offloaded_model(self) -> None:
        # The runtime's rule against one GPU's memory less its 512 MiB reserve: 23.5 GiB holds
        # 11 slots of 512 MiB in its quarter; 80 GiB would hold 16, as the 64 GiB budget does.
        facts = _facts(LLAMA_8B)
        assert serving_shape({}, facts=facts, budget=64 * GIB).parallel == 16
        assert serving_shape({}, facts=facts, budget=64 * GIB, vram=47 * GIB // 2).parallel == 11
        assert serving_shape({}, facts=facts, budget=64 * GIB, vram=80 * GIB).parallel == 16
        # The budget still caps what the GPU would allow, and the GPU caps the token budget.
        assert serving_shape({}, facts=facts, budget=8 * GIB, vram=80 * GIB).parallel == 4
        assert serving_shape({}, facts=facts).parallel == 4
        assert serving_shape({}, facts=facts, vram=6 * GIB).parallel == 2

    @pytest.mark.parametrize(
        ("nodes", "runtime", "slots"),
        [
            ([_node("l4", 24 * 1024, 1)], {}, 11),
            ([_node("h100", 80 * 1024, 1)], {}, 16),
            # The smallest GPU the pod may be scheduled onto is the one it plans for.
            ([_node("l4", 24 * 1024, 1), _node("h100", 80 * 1024, 1)], {}, 11),
            # Nothing offloaded: the host's budget alone.
            ([_node("l4", 24 * 1024, 1)], {"gpuLayers": 0}, 16),
        ],
        ids=["l4", "h100", "either", "cpu-only"],
    )
    def test_a_gpu_pods_estimate_has_the_slots_its_gpu_memory_allows(
        self, nodes: list[dict[str, Any]], runtime: dict[str, Any], slots: int
    ) -> None:
        spec = {"models": ["m"], "resources": {"memory": "64Gi"}, "runtime": runtime}
        placement = size_server(spec, {"m": model("m", LLAMA_8B)}, nodes, "2Gi")
        assert placement is not None and placement.problem is None
        assert placement.sizing.gpus == 1
        per_slot = kv_cache_bytes(_facts(LLAMA_8B), ServingShape(parallel=1))
        assert placement.need.kv_cache_bytes == slots * per_slot


class TestPlacement:
    def test_8b_takes_one_gpu_on_a_node_large_enough(self) -> None:
        need = estimate(_facts(LLAMA_8B), ServingShape(context=8192, parallel=1))
        nodes = [GpuNode("small", 6 * GIB, 4), GpuNode("l4", 24 * GIB, 1)]
        placement = place(need, {}, nodes, "2Gi")
        assert placement.problem is None
        assert placement.sizing.gpus == 1 and placement.sizing.tensor_split == ()
        per_gpu = need.per_gpu_bytes(1)
        assert placement.sizing.min_gpu_memory_mib == math.ceil(per_gpu / MIB)
        # The 6 GiB GPUs are too small for all of it, and the split is only across one node.
        assert 6 * GIB < per_gpu < 24 * GIB
        assert placement.status["perGpuBytes"] == per_gpu
        assert per_gpu >= need.total_bytes - LLAMA_8B["layerBytes"] + GPU_OVERHEAD_BYTES

    def test_70b_is_split_across_the_fewest_gpus_of_one_node(self) -> None:
        need = estimate(_facts(LLAMA_70B), ServingShape(context=8192, parallel=1))
        nodes = [GpuNode("a10s", 24 * GIB, 4)]
        placement = place(need, {}, nodes, "2Gi")
        assert placement.problem is None
        # Two 24 GiB GPUs are too few; three hold a third of the layers each.
        assert need.per_gpu_bytes(2) > 24 * GIB >= need.per_gpu_bytes(3)
        assert placement.sizing.gpus == 3
        assert placement.sizing.tensor_split == (1, 1, 1)
        assert placement.sizing.gpu_layers == 81  # all 80 layers and the output head
        assert placement.sizing.min_gpu_memory_mib == math.ceil(need.per_gpu_bytes(3) / MIB)

    def test_70b_takes_one_large_gpu_where_there_is_one(self) -> None:
        need = estimate(_facts(LLAMA_70B), ServingShape(context=8192, parallel=1))
        nodes = [GpuNode("a10s", 24 * GIB, 4), GpuNode("h100", 80 * GIB, 8)]
        assert place(need, {}, nodes, "2Gi").sizing.gpus == 1

    def test_a_server_that_fits_nowhere_says_so_with_the_numbers(self) -> None:
        need = estimate(_facts(LLAMA_70B), ServingShape(context=8192, parallel=1))
        placement = place(need, {}, [GpuNode("t4", 16 * GIB, 2)], "2Gi")
        assert placement.problem is not None
        assert "16.0 GiB" in placement.problem and "t4" in placement.problem
        assert f"{need.per_gpu_bytes(2) / GIB:.1f} GiB per GPU" in placement.problem

    def test_explicit_gpus_win_and_are_checked_against_the_nodes(self) -> None:
        need = estimate(_facts(LLAMA_70B), ServingShape(context=8192, parallel=1))
        nodes = [GpuNode("a10s", 24 * GIB, 4)]
        placement = place(need, {"gpus": 4}, nodes, "2Gi")
        assert placement.problem is None and placement.sizing.gpus == 4
        assert placement.sizing.tensor_split == (1, 1, 1, 1)
        too_few = place(need, {"gpus": 1}, nodes, "2Gi")
        assert too_few.sizing.gpus == 1 and too_few.problem is not None
        assert "on 1 GPUs" in too_few.problem

    def test_explicit_zero_gpus_stay_on_the_cpu(self) -> None:
        need = estimate(_facts(LLAMA_8B), ServingShape(context=8192, parallel=1))
        placement = place(need, {"gpus": 0}, [GpuNode("l4", 24 * GIB, 1)], "2Gi")
        assert placement.sizing.gpus == 0 and placement.problem is None

    def test_a_cpu_pods_memory_holds_the_model_and_the_process(self) -> None:
        need = estimate(_facts(LLAMA_8B), ServingShape(context=8192, parallel=1))
        sizing = place(need, {}, [], "2Gi").sizing
        assert sizing.gpus is None and sizing.memory is not None
        budget = memory_budget(sizing.memory)
        assert budget is not None and need.total_bytes <= budget < need.total_bytes + MIB

    def test_explicit_memory_and_the_default_floor_win(self) -> None:
        need = estimate(_facts(LLAMA_8B), ServingShape(context=8192, parallel=1))
        assert place(need, {"memory": "4Gi"}, [], "2Gi").sizing.memory is None
        assert place(need, {}, [], "64Gi").sizing.memory == str(64 * GIB)


class TestNodes:
    def test_only_labelled_nodes_with_gpus_count(self) -> None:
        nodes = [
            _node("l4", 23034, 1),
            {"metadata": {"name": "cpu"}, "status": {"capacity": {"cpu": "8"}}},
            _node("no-capacity", 80000, 0),
            {
                **_node("bad", 1, 1),
                "metadata": {"name": "bad", "labels": {"nvidia.com/gpu.memory": "x"}},
            },
        ]
        assert gpu_nodes(nodes, "nvidia.com/gpu") == [GpuNode("l4", 23034 * MIB, 1)]
        assert gpu_nodes(nodes, "amd.com/gpu") == []

    def test_the_largest_model_of_a_server_decides(self) -> None:
        spec = {"models": ["small", "big"], "runtime": {"contextLength": 8192, "parallel": 1}}
        models = {"small": model("small", LLAMA_8B), "big": model("big", LLAMA_70B)}
        placement = size_server(spec, models, [_node("h100", 81559, 8)], "2Gi")
        assert placement is not None
        assert placement.need.weights_bytes == LLAMA_70B["weightsBytes"]
        assert placement.sizing.gpus == 1


NOW = datetime(2026, 1, 1, tzinfo=UTC)
READY = [{"type": "Ready", "status": "True", "reason": "Pulled", "message": ""}]


class TestServerPlan:
    def _plan(self, nodes: list[dict[str, Any]]) -> Any:
        srv = server(models=["llama"], minReplicas=1, resources={}, runtime={"parallel": 1})
        llama = model("llama", {**LLAMA_70B, "name": "llama3.1:70b", "conditions": READY})
        return plan_modelserver(srv, {"llama": llama}, None, OperatorSettings(), NOW, (), nodes)

    def test_a_server_that_fits_nowhere_has_no_pods_and_says_why(self) -> None:
        plan = self._plan([_node("t4", 15360, 2), _node("cpu-only", 0, 0)])
        assert plan.children == ()
        ready = next(c for c in plan.conditions if c.type == "Ready")
        assert (ready.status, ready.reason) == ("False", DOES_NOT_FIT)
        assert "15.0 GiB" in ready.message
        assert plan.status["sizing"]["memoryBytes"] > 40 * GIB

    def test_a_server_that_fits_gets_the_gpus_and_the_affinity(self) -> None:
        plan = self._plan([_node("t4", 15360, 2), _node("a100", 81920, 2)])
        (deployment,) = [c for c in plan.children if c["kind"] == "Deployment"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
            "nodeSelectorTerms"
        ]
        (wanted,) = term["matchExpressions"]
        per_gpu = plan.status["sizing"]["perGpuBytes"]
        assert int(wanted["values"][0]) == math.ceil(per_gpu / MIB) - 1
        assert plan.status["sizing"]["gpus"] == 1
