"""Helpers for the e2e tests: deploy the sample's Model with a ModelServer into a namespace, find
a pod's processes, poll."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from devstack.controlplane import _alive
from tests.support.nodeagent.network import list_netns
from tests.support.stack import SAMPLE, Stack, wait_for

# Small context, few tokens: the runtime pods share two cores with everything else.
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 8, "num_ctx": 1024}
MESSAGES = [{"role": "user", "content": "Say hello."}]


@contextmanager
def brought_down_cleanly(running: Stack, before_down: Callable[[], None]) -> Iterator[Stack]:
    """Yield a started stack; afterwards run ``before_down``, take the stack down, and check that
    no process it started and no network namespace of its node agent remains."""
    pids = [int(p) for p in running._read("pids.json").values()]
    agent = str(running.info["agent"])
    try:
        yield running
    finally:
        before_down()
        running.down()
    left = [n for n in list_netns() if n.startswith(f"corral-{agent}-")]
    alive = [p for p in pids if _alive(p)]
    assert not left and not alive, f"the stack left namespaces {left} and processes {alive}"


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
    done = stack.kubectl(
        "get", "pods", "-n", namespace, "-l", f"corral.dev/modelserver={server}", "-o", "json"
    )
    return list(json.loads(done.stdout)["items"])


def ready_pod(stack: Stack, namespace: str, server: str, timeout: float = 180) -> dict[str, Any]:
    """The server's one Ready pod (waits for it)."""

    def ready() -> dict[str, Any] | None:
        for pod in server_pods(stack, namespace, server):
            conditions = (pod.get("status") or {}).get("conditions") or ()
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return pod
        return None

    return wait_for(f"a Ready pod of {server}", ready, timeout)


def pod_netns(stack: Stack, pod_ip: str) -> str:
    """The node agent's network namespace that holds ``pod_ip``."""
    prefix = f"corral-{stack.info['agent']}-"
    for netns in list_netns():
        if not netns.startswith(prefix):
            continue
        addresses = subprocess.run(
            ["ip", "-n", netns, "-4", "-o", "addr", "show"], capture_output=True, text=True
        ).stdout
        if f" {pod_ip}/" in addresses:
            return netns
    raise LookupError(f"no network namespace holds {pod_ip}")


def netns_pids(netns: str) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return [int(p) for p in done.stdout.split()]
