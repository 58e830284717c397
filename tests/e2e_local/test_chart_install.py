"""The chart for real: ``helm install`` of charts/corral on a control plane of its own, whose node
agent runs the operator and gateway images as pods (processes in their own network namespaces,
logging in with their ServiceAccounts' tokens, reaching the API server at the ``kubernetes``
Service's address), then ``corral deploy`` of the bundled model from its seed claim and
``corral run`` through the gateway pod, ``corral ps``, and ``helm uninstall`` leaving no pods.

Its own control plane, not the session's: the e2e stack's operator and gateway (host processes
watching every namespace) must not reconcile what the chart's operator reconciles.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral_operator import api
from corral_operator.cli.naming import resource_name
from corral_operator.planners.sources import parse_source, served_name
from tests.e2e_local.support import brought_down_cleanly
from tests.support.stack import ROOT, SEED_CLAIM, Stack, wait_for

pytestmark = pytest.mark.cluster

HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "corral"
RELEASE = "corral"
SYSTEM = "corral-system"
MODELS = "default"
CORRAL = Path(sys.executable).parent / "corral"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A control plane and a node agent, nothing of corral's installed."""
    state = tmp_path_factory.mktemp("chart-stack")
    stack = Stack(state)
    stack.up(node_only=True)
    with brought_down_cleanly(stack, lambda: _print_logs(stack)):
        yield stack


def _print_logs(stack: Stack) -> None:
    """The pods' logs, shown by pytest when the test failed."""
    for log in sorted((stack.state_dir / "node" / "pods").glob("*/logs/*.log")):
        print(f"==== {log.parent.parent.name}/{log.name}")
        print(log.read_text(errors="replace")[-4000:])


def helm(stack: Stack, *args: str, timeout: float = 300) -> str:
    done = subprocess.run(
        [str(HELM), f"--kubeconfig={stack.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"helm {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def corral(stack: Stack, *args: str, timeout: float = 420) -> str:
    done = subprocess.run(
        [str(CORRAL), *args, f"--kubeconfig={stack.kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"corral {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def pods(stack: Stack, namespace: str) -> list[dict[str, Any]]:
    out = stack.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def runtime_pods(stack: Stack) -> list[dict[str, Any]]:
    selector = f"{api.LABEL_NAME}={api.RUNTIME_APP}"
    out = stack.kubectl("get", "pods", "-n", MODELS, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def test_helm_install_deploy_run_uninstall(cluster: Stack, test_model_path: Path) -> None:
    helm(
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        SYSTEM,
        "--create-namespace",
        # The images the node agent's map runs (tests.support.stack.image_map), named as such.
        "--set",
        "image.repository=ghcr.io/corral-dev/corral-operator",
        "--set",
        "runtime.image.repository=ghcr.io/corral-dev/corral-runtime",
        # A cold runtime pod loads the model on two busy cores.
        "--set",
        "gateway.holdDeadlineSeconds=300",
        "--wait",
        "--timeout=4m",
    )
    components = {
        pod["metadata"]["labels"]["app.kubernetes.io/component"]: pod
        for pod in pods(cluster, SYSTEM)
        if ready(pod)
    }
    assert set(components) == {"operator", "gateway"}, pods(cluster, SYSTEM)
    # Each runs as the chart's ServiceAccount, with its token mounted where clients read it.
    for component, pod in components.items():
        assert pod["spec"]["serviceAccountName"] == f"{RELEASE}-{component}"
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        assert any(
            m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in mounts
        )

    source = f"pvc://{SEED_CLAIM}/{test_model_path.name}"
    name = resource_name(source)
    model = served_name(parse_source(source), name)
    cluster.seed(MODELS)
    corral(cluster, "deploy", source, "-n", MODELS, "--cpu", "1", "--memory", "2Gi")
    # The chart's operator pulls the file into the cache (a Job of its own) and reports Ready.
    cluster.wait_ready("model", name, MODELS, timeout=240)

    # No --host: the CLI finds the gateway Service of the install and reaches its pod's IP. The
    # server starts from zero replicas, woken by the gateway.
    answer = corral(
        cluster,
        "run",
        model,
        "Say hello.",
        "-n",
        MODELS,
        "--gateway-namespace",
        SYSTEM,
        "-o",
        "temperature=0",
        "-o",
        "num_predict=8",
    )
    print(f"corral run answered: {answer!r}")
    assert answer.strip(), "the model answered nothing"

    def ps_row() -> str | None:
        # NAME MODELS READY IDLE KEEP-ALIVE STATE LOADED
        for line in corral(cluster, "ps", "-n", MODELS).splitlines()[1:]:
            fields = line.split()
            if fields[0] == name and fields[2] == "1/1" and model in fields[-1].split(","):
                return line
        return None

    wait_for("corral ps to show the server ready with the model loaded", ps_row, 60)

    # Deleting the ModelServer and Model is the operator's work (finalizers), so before it goes.
    cluster.kubectl("delete", "modelserver,model", name, "-n", MODELS, "--timeout=120s")
    wait_for("the runtime pods to go", lambda: not runtime_pods(cluster), 120)
    helm(cluster, "uninstall", RELEASE, "--namespace", SYSTEM, "--wait", "--timeout=3m")
    wait_for("the release's pods to go", lambda: not pods(cluster, SYSTEM), 120)
