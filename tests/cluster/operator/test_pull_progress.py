"""Pull progress with a pull that really runs: the session's node runs the operator's pull Job
(the runtime image's ``corral pull``) against a registry that sends slowly, and the Model's
``status.completedBytes``/``totalBytes`` move while it runs, read by the operator from the pull
pod's log through the API (``pods/log``), and end at the model's size."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack import images
from devstack.node import NODE_IP, NODE_NAME, Node
from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, layered_archive, wait_for
from tests.support.gguf_corpus import model_of_size
from tests.support.registry import TestRegistry, running_registry

pytestmark = pytest.mark.cluster
BLOB_MIB = 6
SECONDS_PER_MIB = 3.0  # about 18 s of pull: several progress lines (one per 5 s) on the way
# The runtime image built here with one more layer: its `corral` adds --insecure to a pull (the
# test registry speaks plain HTTP, which `corral pull` accepts only then), nothing else changes.
PULLER_IMAGE = "localhost/corral-runtime-insecure-pull:test"
PULLER_SCRIPT = b"""#!/opt/venv/bin/python
import sys

from corral_runtime.cli import main

if sys.argv[1:2] == ["pull"]:
    sys.argv.append("--insecure")
sys.exit(main())
"""


@pytest.fixture(scope="module")
def puller_image(node: Node, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The node holds PULLER_IMAGE, derived from the runtime image the node runs."""
    (runtime,) = [image for image in images.build() if image.name == "corral-runtime"]
    archive = tmp_path_factory.mktemp("puller") / "puller.tar"
    layered_archive(runtime.archive, archive, PULLER_IMAGE, {"/opt/venv/bin/corral": PULLER_SCRIPT})
    node.import_image(archive)
    return PULLER_IMAGE


@pytest.fixture
def operator_env(puller_image: str) -> dict[str, str]:
    return {
        "CORRAL_OPERATOR_PULL_PROGRESS_SECONDS": "1",
        "CORRAL_OPERATOR_RUNTIME_IMAGE": puller_image,
        "CORRAL_OPERATOR_IMAGE_PULL_POLICY": "Never",
    }


@pytest.fixture
def registry(node: Node, tmp_path: Path) -> Iterator[TestRegistry]:
    # On the node's address: pods reach the host there, not on its loopback.
    with running_registry(tmp_path / "registry", address=NODE_IP) as served:
        yield served


def test_progress_moves_while_the_pull_runs_and_ends_at_the_size(
    registry: TestRegistry, cluster: Cluster, operator: Operator
) -> None:
    # A model file the pull's checks accept (a GGUF llama.cpp loads), of BLOB_MIB MiB.
    blob = model_of_size(BLOB_MIB << 20, seed=int.from_bytes(os.urandom(8)))
    registry.add_model("library", "tiny", "1", blob, template="{{ .Prompt }}")
    registry.faults.slow_seconds_per_mib = SECONDS_PER_MIB
    source = f"ollama://{registry.host}/library/tiny:1"
    cluster.create(
        "models", {"kind": "Model", "metadata": {"name": "tiny"}, "spec": {"source": source}}
    )

    seen: list[tuple[int, int]] = []
    ran_on: set[tuple[str, str]] = set()

    def pull_logs() -> str:
        return "\n".join(
            cluster.core.read_namespaced_pod_log(pod.metadata.name, cluster.ns)
            for pod in cluster.job_pods("app.kubernetes.io/component=pull")
        )

    def ready() -> dict[str, Any] | None:
        status = (cluster.get("models", "tiny") or {}).get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or ()}
        ready = conditions.get("Ready", {})
        if ready.get("status") == "False" and ready.get("reason") not in ("Pulling", None):
            raise AssertionError(f"the pull failed: {ready}\n{pull_logs()[-3000:]}")
        pulls = cluster.job_pods("app.kubernetes.io/component=pull")
        ran_on.update(
            (p.spec.node_name, p.spec.containers[0].image) for p in pulls if p.spec.node_name
        )
        if ready.get("status") == "True":
            return dict(status)
        if "completedBytes" in status:
            seen.append((int(status["completedBytes"]), int(status["totalBytes"])))
        return None

    status = wait_for(ready, 180, "Model tiny Ready")
    partial = sorted({(done, total) for done, total in seen if 0 < done < total})
    assert partial, f"no progress seen while pulling (saw {sorted(set(seen))})"
    completed = [done for done, _ in seen]
    assert completed == sorted(completed), "progress went backwards"
    assert all(total >= BLOB_MIB << 20 for _, total in seen)
    assert status["completedBytes"] == status["totalBytes"] == status["sizeBytes"]
    assert int(status["sizeBytes"]) > BLOB_MIB << 20  # the model blob, the template, the config
    # The pull ran on the node (once scheduled), in the image derived here.
    assert ran_on == {(NODE_NAME, PULLER_IMAGE)}
