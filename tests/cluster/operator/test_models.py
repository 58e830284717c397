"""Model reconciliation with the real operator: cache PVC, pull Job, status, re-pull, GC.

The test plays the pull Job's pod the way a kubelet would: it reports the container terminated
with the puller's JSON result as its termination message (see corral_operator.pull).
"""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from devstack.operator import Operator
from tests.cluster.operator.support import GEMMA_RESULT, Cluster, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def operator_env() -> dict[str, str]:
    return {
        "CORRAL_OPERATOR_PULL_BACKOFF_LIMIT": "0",
        "CORRAL_OPERATOR_CACHE_PROFILES": json.dumps(
            {
                "default": {"size": "20Gi", "accessMode": "ReadWriteMany"},
                "fast": {"size": "5Gi", "storageClassName": "ssd", "accessMode": "ReadWriteOnce"},
            }
        ),
    }


def test_pulling_to_ready_reports_the_model(cluster: Cluster, operator: Operator) -> None:
    cluster.create(
        "models",
        {
            "kind": "Model",
            "metadata": {"name": "gemma"},
            "spec": {
                "source": "gemma3:270m",
                "cache": "fast",
                "parameters": {"temperature": 0.5, "stop": ["<eot>"]},
            },
        },
    )
    cluster.wait_condition("models", "gemma", "Pulled", "False", "Pulling")
    cluster.wait_condition("models", "gemma", "Ready", "False", "Pulling")

    pvc = cluster.core.read_namespaced_persistent_volume_claim("corral-cache-fast", cluster.ns)
    assert pvc.spec.access_modes == ["ReadWriteOnce"]
    assert pvc.spec.storage_class_name == "ssd"
    assert pvc.spec.resources.requests["storage"] == "5Gi"

    job_name = wait_for(
        lambda: (cluster.get("models", "gemma") or {}).get("status", {}).get("pullJob"),
        what="pullJob in status",
    )
    job = cluster.batch.read_namespaced_job(job_name, cluster.ns)
    assert job.spec.backoff_limit == 0 and job.spec.active_deadline_seconds > 0
    assert job.metadata.owner_references[0].kind == "Model"
    pod = job.spec.template.spec
    assert pod.automount_service_account_token is False
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    container = pod.containers[0]
    assert container.args == ["pull", "gemma3:270m", "--models", "/models"]
    env = {e.name: e.value for e in container.env}
    assert env["CORRAL_PULL_RESULT_FILE"] == "/dev/termination-log"
    assert env["CORRAL_PULL_NAME"] == "gemma3:270m"
    assert json.loads(env["CORRAL_PULL_PARAMETERS"]) == {"temperature": 0.5, "stop": ["<eot>"]}
    sc = container.security_context
    assert sc.allow_privilege_escalation is False and sc.read_only_root_filesystem is True
    assert sc.capabilities.drop == ["ALL"]

    cluster.play_pull("gemma")
    cluster.wait_condition("models", "gemma", "Pulled", "True", "Pulled")
    ready = cluster.wait_condition("models", "gemma", "Ready", "True", "Ready")
    model = cluster.get("models", "gemma")
    assert model is not None
    status = model["status"]
    for key in ("digest", "sizeBytes", "family", "parameterSize", "quantization", "contextLength"):
        assert status[key] == GEMMA_RESULT[key]
    assert status["name"] == "gemma3:270m"
    assert status["observedGeneration"] == model["metadata"]["generation"]
    assert ready["observedGeneration"] == model["metadata"]["generation"]


def test_source_change_pulls_again(cluster: Cluster, operator: Operator) -> None:
    cluster.ready_model("m")
    first = cluster.get("models", "m")["status"]["pullJob"]  # type: ignore[index]
    cluster.patch("models", "m", {"spec": {"source": "ollama://qwen3:0.6b"}})
    cluster.wait_condition("models", "m", "Ready", "False", "Pulling")
    second = wait_for(
        lambda: (
            (s := cluster.get("models", "m")["status"]["pullJob"]) != first  # type: ignore[index]
            and s
        ),
        what="a new pull Job",
    )
    wait_for(
        lambda: (
            not [
                j
                for j in cluster.batch.list_namespaced_job(cluster.ns).items
                if j.metadata.name == first
            ]
        ),
        what="the old pull Job deleted",
    )
    cluster.play_pull("m", {**GEMMA_RESULT, "name": "qwen3:0.6b", "family": "qwen3"})
    cluster.wait_condition("models", "m", "Ready", "True")
    status = cluster.get("models", "m")["status"]  # type: ignore[index]
    assert (status["pullJob"], status["name"], status["family"]) == (second, "qwen3:0.6b", "qwen3")


def test_failed_pull_reports_the_puller_error(cluster: Cluster, operator: Operator) -> None:
    cluster.create(
        "models",
        {
            "kind": "Model",
            "metadata": {"name": "m"},
            "spec": {"source": "https://example.com/missing.gguf"},
        },
    )
    cluster.play_pull("m", {"error": "HTTP 404 from example.com"}, exit_code=1)
    cond = cluster.wait_condition("models", "m", "Ready", "False", "PullFailed")
    assert "HTTP 404 from example.com" in cond["message"]
    assert cluster.condition("models", "m", "Pulled")["reason"] == "PullFailed"  # type: ignore[index]


def test_unknown_cache_profile_is_reported(cluster: Cluster, operator: Operator) -> None:
    cluster.create(
        "models",
        {
            "kind": "Model",
            "metadata": {"name": "m"},
            "spec": {"source": "gemma3:270m", "cache": "nope"},
        },
    )
    cond = cluster.wait_condition("models", "m", "Ready", "False", "UnknownCacheProfile")
    assert "spec.cache" in cond["message"]
    assert not cluster.batch.list_namespaced_job(cluster.ns).items


def test_delete_collects_blobs_only_when_no_other_model_uses_them(
    cluster: Cluster, operator: Operator
) -> None:
    cluster.ready_model("a")
    cluster.ready_model("b")  # the same stored model, gemma3:270m
    cluster.delete("models", "a")
    wait_for(lambda: cluster.get("models", "a") is None, what="Model a deleted")
    assert not cluster.job_pods("app.kubernetes.io/component=gc")

    cluster.delete("models", "b")
    gc_pod = wait_for(
        lambda: cluster.job_pods("app.kubernetes.io/component=gc"), what="the collect Job's pod"
    )[0]
    assert gc_pod.spec.containers[0].args == ["rm", "gemma3:270m", "--models", "/models"]
    assert cluster.get("models", "b") is not None, "the finalizer holds b until the Job is done"
    cluster.finish_pod(gc_pod, exit_code=0, message="")
    wait_for(lambda: cluster.get("models", "b") is None, what="Model b deleted")


def test_deleting_the_namespace_of_a_ready_model_finishes(
    cluster: Cluster, operator: Operator
) -> None:
    # The collect Job cannot be created in a namespace being deleted; the finalizer must not
    # hold the namespace's deletion forever (the cache claim goes with the namespace).
    cluster.ready_model("gemma")
    cluster.core.delete_namespace(cluster.ns)

    def gone() -> bool:
        try:
            cluster.core.read_namespace(cluster.ns)
        except ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, 90, f"namespace {cluster.ns} deleted")
    assert not cluster.job_pods("app.kubernetes.io/component=gc")
