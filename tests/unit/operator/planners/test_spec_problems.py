"""ModelServer specs whose settings contradict each other: each contradiction is named, and a
spec without one has none."""

from __future__ import annotations

from typing import Any

import pytest

from corral_operator.planners.modelserver import spec_problems
from corral_operator.settings import OperatorSettings
from tests.unit.operator.factories import server

pytestmark = pytest.mark.unit


def _problems(**spec: Any) -> list[str]:
    return spec_problems(server(**spec)["spec"], OperatorSettings())


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"runtime": {"kvCacheType": "q8_0"}},
        {"runtime": {"kvCacheType": "q4_0", "flashAttention": True}},
        {"runtime": {"kvCacheType": "f16", "flashAttention": False}},
        {"runtime": {"gpuLayers": "auto"}},
        {"runtime": {"gpuLayers": 0}},
        {"resources": {"gpus": 1}, "runtime": {"gpuLayers": 33}},
        {"runtime": {"parallel": 4, "env": [{"name": "CORRAL_THREADS", "value": "2"}]}},
    ],
)
def test_consistent_specs_have_no_problem(spec: dict[str, Any]) -> None:
    assert _problems(**spec) == []


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ({"minReplicas": 2, "maxReplicas": 1}, "spec.minReplicas (2)"),
        (
            {"runtime": {"kvCacheType": "q8_0", "flashAttention": False}},
            "spec.runtime.kvCacheType q8_0 needs flash attention",
        ),
        ({"runtime": {"gpuLayers": 12}}, "spec.runtime.gpuLayers is 12 but spec.resources.gpus"),
        (
            {"resources": {"gpus": 2}, "runtime": {"gpuLayers": "0"}},
            "spec.resources.gpus is 2 but spec.runtime.gpuLayers is 0",
        ),
        (
            {"runtime": {"kvCacheType": "q4_0", "env": [{"name": "CORRAL_KV_CACHE_TYPE"}]}},
            "spec.runtime.kvCacheType and spec.runtime.env CORRAL_KV_CACHE_TYPE both set it",
        ),
        (
            {"runtime": {"parallel": 4, "env": [{"name": "CORRAL_PARALLEL", "value": "8"}]}},
            "spec.runtime.parallel and spec.runtime.env CORRAL_PARALLEL",
        ),
    ],
)
def test_each_contradiction_is_named(spec: dict[str, Any], named: str) -> None:
    (problem,) = _problems(**spec)
    assert problem.startswith(named)


def test_every_contradiction_is_listed() -> None:
    problems = _problems(
        minReplicas=3,
        maxReplicas=1,
        runtime={"kvCacheType": "q8_0", "flashAttention": False, "gpuLayers": 4},
    )
    assert len(problems) == 3
