"""The operator's whole loop on the local cluster, with real pods: a Model is pulled by its Job
into the cache, a ModelServer's pod serves it (the official ``ollama`` client at the pod's IP),
deleting the ModelServer stops its container's process, and a runtime killed on the node is
restarted by the kubelet and reported."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import ollama
import pytest

from devstack.controlplane import _alive
from devstack.poll import wait_for
from devstack.stack import Stack
from tests.e2e_local.support import (
    MESSAGES,
    OPTIONS,
    container_id,
    container_pid,
    deploy,
    ready_pod,
    server_pods,
    task_running,
)

pytestmark = pytest.mark.cluster

RUNTIME_PORT = 11434
GGUF_BYTES = 253_113_024


def chat(pod_ip: str, model: str) -> str:
    with ollama.Client(host=f"http://{pod_ip}:{RUNTIME_PORT}", timeout=120) as client:
        reply = client.chat(model=model, messages=MESSAGES, options=OPTIONS)
    return str(reply.message.content)


def test_model_is_pulled_served_and_stopped(stack: Stack, namespace: str) -> None:
    served = deploy(stack, namespace, "gemma", "gemma", min_replicas=1)

    # The pull Job ran the real puller, which reported what it stored.
    model = stack.get("model", "gemma", namespace) or {}
    job = stack.get("job", model["status"]["pullJob"], namespace) or {}
    assert job["status"].get("succeeded") == 1
    status = model["status"]
    assert status["name"] == served
    # The size counts every layer: the GGUF, the template and the parameters.
    assert status["digest"].startswith("sha256:") and status["sizeBytes"] > GGUF_BYTES
    assert (status["format"], status["family"]) == ("gguf", "gemma3")
    # ... into the cache claim, in Ollama's layout.
    cache = stack.get("pvc", status["cachePVC"], namespace) or {}
    volume = stack.get("pv", cache["spec"]["volumeName"], "") or {}
    root = Path(volume["spec"]["hostPath"]["path"])
    assert GGUF_BYTES in {blob.stat().st_size for blob in (root / "blobs").iterdir()}
    assert [m.parent.name for m in (root / "manifests").rglob("latest")] == ["gemma"]

    pod = ready_pod(stack, namespace, "gemma")
    stack.wait_ready("modelserver", "gemma", namespace, timeout=60)
    assert chat(pod["status"]["podIP"], "gemma").strip()

    # The runtime is the container's process on the node, running the image's `corral serve`.
    cid = container_id(pod)
    pid = container_pid(stack, pod)
    assert b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"), pid
    stack.kubectl("delete", "modelserver", "gemma", "-n", namespace, "--wait=false")
    wait_for("the runtime process to exit", lambda: not _alive(pid), 90)
    wait_for("the pod to go", lambda: not server_pods(stack, namespace, "gemma"), 60)
    assert not task_running(stack, cid), "the container still runs on the node"


def test_crashed_runtime_is_restarted_and_reported(stack: Stack, namespace: str) -> None:
    deploy(stack, namespace, "gemma", "crashy", min_replicas=1)
    pod = ready_pod(stack, namespace, "crashy")
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    # Kill the container's process on the node, as the kernel's OOM killer or a crash would.
    os.kill(container_pid(stack, pod), signal.SIGKILL)

    def restarted() -> dict[str, object] | None:
        current = stack.get("pod", name, namespace) or {}
        (status,) = (current.get("status") or {}).get("containerStatuses") or [{}]
        return status if status.get("restartCount", 0) >= 1 else None

    status = wait_for("the restart to be reported", restarted, 60)
    last = status["lastState"]["terminated"]  # type: ignore[index]
    assert last["exitCode"] == 137 and last["reason"] == "Error"
    # The same pod serves again once its new process is ready.
    again = ready_pod(stack, namespace, "crashy")
    assert again["metadata"]["name"] == name
    assert chat(ip, "gemma").strip()
    stack.wait_ready("modelserver", "crashy", namespace, timeout=60)
