"""One ModelServer serving two Models on the real node: the Gemma base model and the Qwen
instruct model behind one runtime pod, reached through the gateway by the official clients.

The pod's memory limit fits one model at a time: the operator turns that limit into the pod's
memory budget, so the runtime evicts the idle model to load the other. Alternating requests all
succeed, ``/api/ps`` through the gateway and ``corral ps`` show the one loaded model, and the
container (whose cgroup limit is real on this node) is never OOM-killed or restarted.

The session gateway routes every namespace, so the test names its Models after its namespace.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import yaml

from corral_operator.builders.memory import memory_budget, memory_bytes
from devstack.poll import wait_for
from devstack.stack import SEED_CLAIM, Stack
from tests.e2e_local.support import container_pid, ready_pod, server_pods

pytestmark = pytest.mark.cluster

CORRAL = Path(sys.executable).parent / "corral"
SERVER = "duo"
# Qwen's estimate alone fits the budget of this limit, Gemma's and Qwen's together do not (the
# test checks both against the sizes /api/ps reports); the process itself takes far less.
MEMORY_LIMIT = "1Gi"
ROUNDS = 3
PROMPT = "Say hello."
OPTIONS = {"temperature": 0, "seed": 1, "num_predict": 4}


def _model(name: str, file: str) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": name},
        "spec": {"source": f"pvc://{SEED_CLAIM}/{file}", "cache": "default"},
    }


def _server(models: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": SERVER},
        "spec": {
            "models": models,
            "minReplicas": 1,
            "maxReplicas": 1,
            "resources": {"gpus": 0, "cpu": "1", "memory": MEMORY_LIMIT},
            "runtime": {"contextLength": 1024, "parallel": 1, "gpuLayers": 0},
        },
    }


def loaded(gateway: str, ours: set[str]) -> dict[str, int]:
    """Our models the cluster's pods have loaded (the gateway's ``/api/ps``), with their sizes."""
    listed = httpx.get(f"{gateway}/api/ps", timeout=10).json()["models"]
    return {m["name"]: int(m["size"]) for m in listed if m["name"] in ours}


def corral_ps_loaded(stack: Stack, namespace: str) -> list[str]:
    """The LOADED column of ``corral ps``'s row for the server (the last column)."""
    done = subprocess.run(
        [str(CORRAL), "ps", "-n", namespace, f"--kubeconfig={stack.kubeconfig}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    (row,) = [fields for fields in rows if fields and fields[0] == SERVER]
    return row[-1].split(",")


def container_memory(stack: Stack, pod: dict[str, Any]) -> tuple[int | None, int]:
    """The runtime container's memory cgroup limit (None: none) and its OOM kills so far, from
    the host's view of its process (cgroup v1's memory controller, or v2)."""
    pid = container_pid(stack, pod)
    groups = dict(
        line.split(":", 2)[1:] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    )
    if "memory" in groups:  # v1: the memory controller's own hierarchy
        cgroup = Path("/sys/fs/cgroup/memory") / groups["memory"].lstrip("/")
        limit, events = "memory.limit_in_bytes", "memory.oom_control"
    else:
        cgroup = Path("/sys/fs/cgroup") / groups[""].lstrip("/")
        limit, events = "memory.max", "memory.events"
    value = (cgroup / limit).read_text().strip()
    counts = dict(line.split() for line in (cgroup / events).read_text().splitlines())
    unlimited = value == "max" or int(value) >= 2**62
    return (None if unlimited else int(value)), int(counts["oom_kill"])


def restarts(stack: Stack, namespace: str) -> list[int]:
    return [
        status["restartCount"]
        for pod in server_pods(stack, namespace, SERVER)
        for status in pod["status"].get("containerStatuses") or ()
    ]


def test_one_server_alternates_two_models_within_its_memory(
    stack: Stack,
    gateway: str,
    namespace: str,
    test_model_path: Path,
    instruct_model_path: Path,
) -> None:
    stack.seed(namespace)
    stack.seed(namespace, source=instruct_model_path)
    gemma, qwen = f"g-{namespace}", f"q-{namespace}"
    objects = [
        _model(gemma, test_model_path.name),
        _model(qwen, instruct_model_path.name),
        _server([gemma, qwen]),
    ]
    stack.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))
    for name in (gemma, qwen):
        stack.wait_ready("model", name, namespace, timeout=240)
    pod = ready_pod(stack, namespace, SERVER, timeout=240)

    # The pod runs under the limit asked for, with the budget the operator derived from it.
    limit = memory_bytes(MEMORY_LIMIT)
    budget = memory_budget(MEMORY_LIMIT)
    assert limit is not None and budget is not None
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert env["CORRAL_MEMORY_BUDGET_BYTES"] == str(budget)
    assert env["CORRAL_MAX_LOADED_MODELS"] == "2"
    assert container_memory(stack, pod) == (limit, 0)

    served = {gemma: f"{gemma}:latest", qwen: f"{qwen}:latest"}
    ours = set(served.values())
    sizes: dict[str, int] = {}
    with (
        ollama.Client(host=gateway, timeout=240) as native,
        openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", timeout=240) as compatible,
    ):
        for round_ in range(ROUNDS):
            for model in (gemma, qwen):
                if round_ % 2 == 0:
                    reply = native.chat(
                        model=model,
                        messages=[{"role": "user", "content": PROMPT}],
                        options=OPTIONS,
                    )
                    assert reply.message.content, (model, reply)
                else:
                    completion = compatible.chat.completions.create(
                        model=model,
                        messages=[{"role": "user", "content": PROMPT}],
                        temperature=0,
                        seed=1,
                        max_tokens=4,
                    )
                    assert completion.choices[0].message.content, (model, completion)
                # One model at a time: the one just used, the other evicted to make room.
                now = loaded(gateway, ours)
                assert set(now) == {served[model]}, (round_, model, now)
                sizes.update(now)

    # The limit was the one this test means: either model alone fits its budget, both do not.
    assert max(sizes.values()) <= budget < sum(sizes.values()), (sizes, budget)
    # ``corral ps`` shows what the pod has loaded: the model used last.
    wait_for(
        "corral ps to show the last model loaded",
        lambda: corral_ps_loaded(stack, namespace) == [served[qwen]],
        60,
    )
    # Eviction, not the kernel's OOM killer: the same container ran throughout.
    assert restarts(stack, namespace) == [0]
    assert container_memory(stack, pod) == (limit, 0)
