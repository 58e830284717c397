"""The chart as a user installs it, on the session's real node: ``helm install`` of charts/corral
as a second release (its operator and gateway pods run the images built here, log in with their
ServiceAccounts' tokens and reach the API server at the ``kubernetes`` Service), ``corral
deploy`` of the bundled model from its seed claim, ``corral run`` through the release's gateway
pod (found by the CLI), ``corral ps``, and ``helm uninstall`` leaving no pods.

The package's release (``stack``) stays installed; nothing of the two may fight:

- release ``corral-chart`` in namespace ``corral-chart-system``: every namespaced object and every
  cluster-scoped one (its ClusterRoles and bindings are named after the release) is its own;
- the chart's default ``crds.install``: the CRDs exist, the session's (applied from crds/) and
  owned by no release, so the chart leaves them out (an install over them would fail on their
  ownership) and the uninstall leaves them in place;
- two operators watching every namespace would reconcile the same objects, so the package
  release's operator is scaled to zero while this module runs, and back to one afterwards.
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
from corral_operator.sources import parse_source, served_name
from devstack.node import NODE_NAME
from devstack.poll import wait_for
from devstack.stack import CHART, HELM, NAMESPACE, RELEASE, SEED_CLAIM, Stack

pytestmark = pytest.mark.cluster

OWN_RELEASE = "corral-chart"
SYSTEM = "corral-chart-system"
CORRAL = Path(sys.executable).parent / "corral"


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


def pods(stack: Stack, namespace: str, selector: str = "") -> list[dict[str, Any]]:
    labels = ["-l", selector] if selector else []
    out = stack.kubectl("get", "pods", "-n", namespace, *labels, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def scale_operator(stack: Stack, replicas: int) -> None:
    """Scale the package release's operator Deployment and wait until it has ``replicas`` pods."""
    deployment = f"deployment/{RELEASE}-operator"
    stack.kubectl("scale", deployment, "-n", NAMESPACE, f"--replicas={replicas}")
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=operator"

    def settled() -> bool:
        current = pods(stack, NAMESPACE, selector)
        return len(current) == replicas and all(ready(p) for p in current)

    wait_for(f"{RELEASE}'s operator at {replicas} replicas", settled, 180)


@pytest.fixture(scope="module")
def cluster(stack: Stack) -> Iterator[Stack]:
    """The session's cluster with the package release's operator paused; afterwards this module's
    release is gone (uninstalled by the test, or here when the test failed before) and the
    paused operator runs again."""
    scale_operator(stack, 0)
    try:
        yield stack
    finally:
        try:
            stack.helm("uninstall", OWN_RELEASE, "--namespace", SYSTEM, "--wait", check=False)
            stack.kubectl("delete", "namespace", SYSTEM, "--ignore-not-found", "--wait=false")
        finally:
            scale_operator(stack, 1)


def test_helm_install_deploy_run_uninstall(
    cluster: Stack, namespace: str, test_model_path: Path
) -> None:
    helm(
        cluster,
        "install", OWN_RELEASE, str(CHART), "--namespace", SYSTEM, "--create-namespace",
        # A cold runtime pod loads the model on two busy cores.
        "--set", "gateway.holdDeadlineSeconds=300",
        "--wait", "--timeout=4m",
    )  # fmt: skip
    components = {
        pod["metadata"]["labels"]["app.kubernetes.io/component"]: pod
        for pod in pods(cluster, SYSTEM)
        if ready(pod)
    }
    assert set(components) == {"operator", "gateway"}, pods(cluster, SYSTEM)
    # Each runs as the chart's ServiceAccount, with its token mounted where clients read it.
    for component, pod in components.items():
        assert pod["spec"]["serviceAccountName"] == f"{OWN_RELEASE}-{component}"
        assert pod["spec"]["nodeName"] == NODE_NAME
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        assert any(
            m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in mounts
        )

    source = f"pvc://{SEED_CLAIM}/{test_model_path.name}"
    name = resource_name(source)
    model = served_name(parse_source(source), name)
    cluster.seed(namespace)
    corral(cluster, "deploy", source, "-n", namespace, "--cpu", "1", "--memory", "2Gi")
    # This release's operator pulls the file into the cache (a Job of its own), reports Ready.
    cluster.wait_ready("model", name, namespace, timeout=240)

    # No --host: the CLI finds the gateway Service of the install and reaches its pod's IP. The
    # server starts from zero replicas, woken by the gateway.
    answer = corral(
        cluster,
        "run", model, "Say hello.", "-n", namespace, "--gateway-namespace", SYSTEM,
        "-o", "temperature=0", "-o", "num_predict=8",
    )  # fmt: skip
    print(f"corral run answered: {answer!r}")
    assert answer.strip(), "the model answered nothing"

    def ps_row() -> str | None:
        # NAME MODELS READY IDLE KEEP-ALIVE STATE LOADED
        for line in corral(cluster, "ps", "-n", namespace).splitlines()[1:]:
            fields = line.split()
            if fields[0] == name and fields[2] == "1/1" and model in fields[-1].split(","):
                return line
        return None

    wait_for("corral ps to show the server ready with the model loaded", ps_row, 60)

    # Deleting the ModelServer and Model is the operator's work (finalizers), so before it goes.
    cluster.kubectl("delete", "modelserver,model", name, "-n", namespace, "--timeout=120s")
    runtime = f"{api.LABEL_NAME}={api.RUNTIME_APP}"
    wait_for("the runtime pods to go", lambda: not pods(cluster, namespace, runtime), 120)
    helm(cluster, "uninstall", OWN_RELEASE, "--namespace", SYSTEM, "--wait", "--timeout=3m")
    wait_for("the release's pods to go", lambda: not pods(cluster, SYSTEM), 120)
    # Its cluster-scoped objects went with it; the package release's are untouched.
    roles = cluster.kubectl("get", "clusterroles", "-o", "name").stdout.split()
    names = {role.rsplit("/", 1)[1] for role in roles}
    assert not {n for n in names if n.startswith(f"{OWN_RELEASE}-")}, sorted(names)
    assert f"{RELEASE}-operator" in names
    for crd in ("models.corral.dev", "modelservers.corral.dev"):
        assert cluster.get("crd", crd, ""), f"{crd} went with the release"
