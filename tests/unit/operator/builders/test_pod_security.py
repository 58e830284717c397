"""Every pod the operator builds (runtime Deployments, pull and collect Jobs) is "restricted".

The specs come from the operator's own pure builders, the same functions its handlers apply,
for plain, GPU and fully customised ModelServers.
"""

from __future__ import annotations

from typing import Any

import pytest

from corral_operator.builders.jobs import build_gc_job, build_pull_job
from corral_operator.builders.runtime import ServedModel, build_deployment
from corral_operator.settings import OperatorSettings
from tests.support.pod_security import pod_templates, restricted_violations

pytestmark = pytest.mark.unit

SETTINGS = OperatorSettings()
MODEL: dict[str, Any] = {
    "apiVersion": "corral.dev/v1alpha1",
    "kind": "Model",
    "metadata": {"name": "gemma3", "namespace": "ns", "uid": "u-1", "generation": 1},
    "spec": {
        "source": "gemma3:270m",
        "template": "{{ .Prompt }}",
        "system": "Be brief.",
        "parameters": {"temperature": 0.2, "numCtx": 2048},
    },
}


def _server(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "srv", "namespace": "ns", "uid": "u-2", "generation": 1},
        "spec": {"models": ["gemma3"], **spec},
    }


SERVERS = {
    "cpu": _server({}),
    "gpu": _server(
        {
            "resources": {"gpus": 2, "cpu": "4", "memory": "16Gi"},
            "nodeSelector": {"gpu": "a100"},
            "runtimeClassName": "nvidia",
            "runtime": {"gpuLayers": "auto", "flashAttention": True, "parallel": 8},
        }
    ),
    "custom": _server(
        {
            "auth": {"apiKeySecretRef": {"name": "keys", "key": "k"}},
            "runtime": {
                "image": "example.com/runtime:1",
                "env": [{"name": "EXTRA", "value": "1"}],
                "extraArgs": ["--verbose"],
            },
        }
    ),
}


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_runtime_pods_are_restricted(name: str) -> None:
    served = [ServedModel(model="gemma3", name="gemma3:270m", digest="sha256:" + "0" * 64)]
    deployment = build_deployment(
        SERVERS[name], replicas=1, claim="corral-cache-default", models=served, settings=SETTINGS
    )
    [(pod_spec, pod_annotations)] = pod_templates(deployment)
    assert restricted_violations(pod_spec, pod_annotations) == []


def test_pull_job_pods_are_restricted() -> None:
    job = build_pull_job(MODEL, "gemma3:270m", "corral-cache-default", SETTINGS)
    [(pod_spec, pod_annotations)] = pod_templates(job)
    assert restricted_violations(pod_spec, pod_annotations) == []


def test_collect_job_pods_are_restricted() -> None:
    model = {**MODEL, "status": {"name": "gemma3:270m"}}
    job = build_gc_job(model, "gemma3:270m", "corral-cache-default", SETTINGS)
    [(pod_spec, pod_annotations)] = pod_templates(job)
    assert restricted_violations(pod_spec, pod_annotations) == []
