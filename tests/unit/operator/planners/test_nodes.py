"""Which node changes re-size which ModelServers (planners/nodes.py)."""

from __future__ import annotations

from typing import Any

import pytest

from corral_operator.planners.nodes import node_gpus, resizes, sized_from_nodes
from tests.unit.operator.factories import server

pytestmark = pytest.mark.unit

SIZING = {"memoryBytes": 46 * 2**30, "gpus": 1}


def _node(labels: dict[str, str], gpus: str = "2", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "gpu-1", "labels": {"kubernetes.io/hostname": "gpu-1", **labels}},
        "status": {"capacity": {"cpu": "16", "nvidia.com/gpu": gpus}, **status},
    }


class TestNodeGpus:
    def test_an_unlabelled_node_is_nothing_sizing_reads(self) -> None:
        assert node_gpus(_node({})) is None

    def test_a_heartbeat_or_another_label_reads_the_same(self) -> None:
        labelled = {"nvidia.com/gpu.memory": "81920"}
        before = node_gpus(_node(labelled))
        beat = _node({**labelled, "team": "a"}, conditions=[{"type": "Ready", "status": "True"}])
        assert node_gpus(beat) == before

    def test_the_gpu_memory_label_and_the_gpu_count_are_read(self) -> None:
        before = node_gpus(_node({"nvidia.com/gpu.memory": "16384"}))
        assert node_gpus(_node({"nvidia.com/gpu.memory": "81920"})) != before
        assert node_gpus(_node({"nvidia.com/gpu.memory": "16384"}, gpus="4")) != before


class TestResizes:
    LARGE = node_gpus(_node({"nvidia.com/gpu.memory": "81920"}))
    SMALL = node_gpus(_node({"nvidia.com/gpu.memory": "16384"}))

    def test_a_gpu_node_joining_leaving_or_relabelled(self) -> None:
        assert resizes(False, False, None, self.LARGE)  # joined
        assert resizes(False, True, self.LARGE, None)  # left, or lost its label
        assert resizes(False, True, self.SMALL, self.LARGE)  # relabelled

    def test_an_unchanged_or_unlabelled_node_does_not(self) -> None:
        assert not resizes(False, True, self.LARGE, self.LARGE)
        assert not resizes(False, False, None, None)

    def test_a_first_listing_does_not_but_a_relisting_compares(self) -> None:
        # At start-up every server is reconciled anyway; after a broken watch, a listing may
        # carry a change the watch missed.
        assert not resizes(True, False, None, self.LARGE)
        assert resizes(True, True, self.SMALL, self.LARGE)
        assert not resizes(True, True, self.LARGE, self.LARGE)


class TestSizedFromNodes:
    def test_a_sized_server_without_a_gpu_count(self) -> None:
        assert sized_from_nodes(server(status={"sizing": SIZING}, resources={}))
        assert sized_from_nodes(server(status={"sizing": SIZING}, resources={"memory": "8Gi"}))

    def test_an_explicit_gpu_count_is_still_checked_against_the_nodes(self) -> None:
        assert sized_from_nodes(server(status={"sizing": SIZING}, resources={"gpus": 2}))

    def test_a_cpu_server_or_one_not_sized_is_not(self) -> None:
        assert not sized_from_nodes(server(status={"sizing": SIZING}, resources={"gpus": 0}))
        assert not sized_from_nodes(server(resources={}))
