"""Pull progress with a pull that really runs: the node agent runs the operator's pull Job (the
real ``corral pull``) against a registry that sends slowly, and the Model's
``status.completedBytes``/``totalBytes`` move while it runs, read by the operator from the pull
pod's log through the API (``pods/log``), and end at the model's size."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral_operator.settings import OperatorSettings
from tests.cluster.operator.support import Cluster, NodeAgent, Operator, wait_for
from tests.support.gguf_corpus import model_of_size
from tests.support.nodeagent.imagemap import image_repository
from tests.support.registry import TestRegistry, running_registry

pytestmark = pytest.mark.cluster
BLOB_MIB = 6
SECONDS_PER_MIB = 3.0  # about 18 s of pull: several progress lines (one per 5 s) on the way


@pytest.fixture
def operator_env() -> dict[str, str]:
    return {"CORRAL_OPERATOR_PULL_PROGRESS_SECONDS": "1"}


@pytest.fixture
def node_agent(kubeconfig: Path, tmp_path: Path) -> Iterator[NodeAgent]:
    """A node whose pods run this environment's ``corral`` for the runtime image."""
    bin_dir = Path(sys.executable).parent
    corral = bin_dir / "corral"
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    # The test registry speaks plain HTTP, which `corral pull` accepts only with --insecure.
    wrapper = wrappers / "corral"
    wrapper.write_text(
        f'#!/bin/sh\nif [ "$1" = pull ]; then exec {corral} "$@" --insecure; fi\n'
        f'exec {corral} "$@"\n'
    )
    wrapper.chmod(0o755)
    path = os.pathsep.join([str(wrappers), str(bin_dir), os.environ.get("PATH", "/usr/bin:/bin")])
    runtime = image_repository(OperatorSettings().runtime_image)
    agent = NodeAgent(
        kubeconfig,
        tmp_path / "agent",
        {runtime: {"entrypoint": [str(wrapper)], "env": {"PATH": path}}},
    )
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def registry(node_agent: NodeAgent, tmp_path: Path) -> Iterator[TestRegistry]:
    # On the node's address: pods reach the host there, not on its loopback.
    with running_registry(tmp_path / "registry", address=node_agent.address) as served:
        yield served


def test_progress_moves_while_the_pull_runs_and_ends_at_the_size(
    node_agent: NodeAgent, registry: TestRegistry, cluster: Cluster, operator: Operator
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

    def ready() -> dict[str, Any] | None:
        status = (cluster.get("models", "tiny") or {}).get("status") or {}
        conditions = {c["type"]: c for c in status.get("conditions") or ()}
        ready = conditions.get("Ready", {})
        if ready.get("status") == "False" and ready.get("reason") not in ("Pulling", None):
            raise AssertionError(f"the pull failed: {ready}\n{node_agent.log()[-3000:]}")
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
