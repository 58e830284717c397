"""Helpers for the e2e tests: deploy the sample's Model with a ModelServer into a namespace, find
a pod's container on the node, run an extra gateway on the host, check a stack went down clean."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from corral_operator import api
from devstack.poll import wait_for
from devstack.stack import NAMESPACE, RELEASE, SAMPLE, Stack
from tests.support.serveproc import ServedProcess, gateway_process

# Small context, few tokens: the runtime pods share two cores with everything else.
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 8, "num_ctx": 1024}
MESSAGES = [{"role": "user", "content": "Say hello."}]
RUNTIME_PODS = f"{api.LABEL_NAME}={api.RUNTIME_APP}"


def pods(stack: Stack, *selector: str, namespace: str | None = None) -> list[dict[str, Any]]:
    """Pods matching the label ``selector`` in ``namespace`` (every namespace when None)."""
    where = ["-n", namespace] if namespace else ["-A"]
    labels = ["-l", ",".join(selector)] if selector else []
    done = stack.kubectl("get", "pods", *where, *labels, "-o", "json")
    return list(json.loads(done.stdout)["items"])


@contextmanager
def brought_down_cleanly(running: Stack, before_down: Callable[[], None]) -> Iterator[Stack]:
    """Yield an installed stack; afterwards run ``before_down``, take the stack down (the release
    is uninstalled), and check that none of the release's pods and no corral runtime pod (the
    tests' namespaces are being deleted) is left on the node."""
    try:
        yield running
    finally:
        before_down()
        running.down()
    release = f"app.kubernetes.io/instance={RELEASE}"
    wait_for(
        "the release's pods to go", lambda: not pods(running, release, namespace=NAMESPACE), 60
    )

    def runtime_pods_left() -> list[str]:
        return [
            f"{p['metadata']['namespace']}/{p['metadata']['name']}"
            for p in pods(running, RUNTIME_PODS)
        ]

    try:
        wait_for("the runtime pods to go", lambda: not runtime_pods_left(), 120)
    except TimeoutError:
        raise AssertionError(f"runtime pods outlived the stack: {runtime_pods_left()}") from None


def sample(kind: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all(SAMPLE.read_text()):
        if doc and doc["kind"] == kind:
            return dict(doc)
    raise LookupError(f"{SAMPLE.name} has no {kind}")


def deploy(
    stack: Stack,
    namespace: str,
    model: str,
    server: str,
    *,
    min_replicas: int,
    max_replicas: int = 1,
    keep_alive: int = 300,
    runtime: dict[str, Any] | None = None,
) -> str:
    """Seed the claim, apply the sample's Model as ``model`` and a ModelServer ``server`` for it,
    wait for the Model to be Ready; returns the name the model is served under."""
    stack.seed(namespace)
    model_obj = copy.deepcopy(sample("Model"))
    model_obj["metadata"] = {"name": model}
    server_obj = copy.deepcopy(sample("ModelServer"))
    server_obj["metadata"] = {"name": server}
    server_obj["spec"].update(
        models=[model],
        minReplicas=min_replicas,
        maxReplicas=max_replicas,
        keepAliveSeconds=keep_alive,
    )
    server_obj["spec"]["runtime"].update(contextLength=1024, **(runtime or {}))
    stack.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([model_obj, server_obj])
    )
    stack.wait_ready("model", model, namespace, timeout=180)
    return f"{model}:latest"


def server_pods(stack: Stack, namespace: str, server: str) -> list[dict[str, Any]]:
    return pods(stack, f"corral.dev/modelserver={server}", namespace=namespace)


def ready_pod(stack: Stack, namespace: str, server: str, timeout: float = 180) -> dict[str, Any]:
    """The server's one Ready pod (waits for it)."""

    def ready() -> dict[str, Any] | None:
        for pod in server_pods(stack, namespace, server):
            conditions = (pod.get("status") or {}).get("conditions") or ()
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return pod
        return None

    return wait_for(f"a Ready pod of {server}", ready, timeout)


def container_id(pod: dict[str, Any]) -> str:
    """The pod's (one) container's containerd id, from its status."""
    (status,) = pod["status"]["containerStatuses"]
    runtime, _, cid = str(status["containerID"]).partition("://")
    assert runtime == "containerd", status
    return cid


def task_running(stack: Stack, cid: str) -> bool:
    """Whether container ``cid`` has a running task on the node."""
    task = stack.the_node.task(cid)
    return task is not None and task.status == "RUNNING"


def container_pid(stack: Stack, pod: dict[str, Any]) -> int:
    """The host pid of the pod's running container (its process is visible from the host)."""
    cid = container_id(pod)
    wait_for(f"container {cid[:12]} running", lambda: task_running(stack, cid), 30)
    return stack.the_node.container_pid(cid)


@contextmanager
def host_gateway(stack: Stack, env: dict[str, str], log_dir: Path) -> Iterator[ServedProcess]:
    """A gateway with settings of its own as a process on this machine (``python -m
    corral_operator.gateway`` with the stack's kubeconfig): it reaches the pods at their IPs as
    the chart's gateway does from its pod. Stopped when the block ends."""
    settings = {"CORRAL_GATEWAY_KUBECONFIG": str(stack.kubeconfig), **env}
    with gateway_process(settings, log=log_dir / "gateway.log") as served:
        yield served
