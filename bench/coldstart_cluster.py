"""A cold start on the local cluster: from a request sent through the gateway to a ModelServer
at zero replicas, to its first token, beyond the model's own load in the pod.

Brings up its own stack (``devstack``: the control plane, the real node with containerd and
kube-proxy, the chart with the images built from this tree; about five minutes the first time)
in a temporary directory, applies the local sample (``manifests/samples/local-gemma3-270m.yaml``)
and lowers its ``keepAliveSeconds`` so that the server goes back to zero between rounds. Each
round waits until no runtime pod is left (none terminating either), then sends one streamed
greedy ``/api/generate`` through the gateway's NodePort and notes its first token. Meanwhile a
thread polls the pod (every 50 ms) for when it exists, when its container runs and when it is
Ready. The load is what the runtime logged (``loaded … in X s``: the weights read and the
context made), which its pods start at once (``CORRAL_PRELOAD``).

Prints each round's timeline, the medians, and last ``cluster_first_token_minus_load_ms=<x>``
(goal: at most 500). Needs root and the node's packages (``make node-deps``), as ``make up``; no
other stack may run (it takes the machine's one node).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # devstack and tests.support when run as a script

from corral_operator.builders.runtime import selector_labels  # noqa: E402
from devstack.poll import wait_for  # noqa: E402
from devstack.stack import Stack, free_node_port, running  # noqa: E402
from tests.support.serveproc import first_token_at  # noqa: E402

NAMESPACE = "default"
SERVER = "gemma3-270m"
MODEL = SERVER  # the Model's own name routes (its served name is gemma3-270m:latest)
KEEP_ALIVE_SECONDS = 2
POLL_SECONDS = 0.05
LOADED = re.compile(r"loaded \S+ \(.*\) in ([0-9.]+)s")
# As the e2e tier's session: activity written every second, idle servers checked every 2 s.
VALUES = {
    "gateway": {
        "holdDeadlineSeconds": 300,
        "extraEnv": [
            {"name": "CORRAL_GATEWAY_ACTIVITY_INTERVAL_SECONDS", "value": "1"},
            {"name": "CORRAL_GATEWAY_HEARTBEAT_SECONDS", "value": "1"},
        ],
    },
    "operator": {"extraEnv": [{"name": "CORRAL_OPERATOR_KEEP_ALIVE_CHECK_SECONDS", "value": "2"}]},
}


@dataclass(frozen=True, slots=True)
class Round:
    first_token_ms: float  # request sent to its first token
    load_ms: float  # the runtime's own load, from its log
    pod_ms: float | None  # request sent to the pod object existing
    running_ms: float | None  # … to its container running
    ready_ms: float | None  # … to the pod Ready

    @property
    def beyond_load_ms(self) -> float:
        return self.first_token_ms - self.load_ms


class PodWatch(threading.Thread):
    """Notes when the server's first pod appears, runs its container and turns Ready."""

    def __init__(self, core: client.CoreV1Api, selector: str, started: float) -> None:
        super().__init__(daemon=True)
        self.core, self.selector, self.started = core, selector, started
        self.seen: dict[str, float] = {}
        self.name: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and "ready" not in self.seen:
            pods = self.core.list_namespaced_pod(NAMESPACE, label_selector=self.selector).items
            now = (time.perf_counter() - self.started) * 1000
            for pod in pods:
                self.name = pod.metadata.name
                self.seen.setdefault("pod", now)
                statuses = pod.status.container_statuses or []
                if any(s.state and s.state.running for s in statuses):
                    self.seen.setdefault("running", now)
                if any(
                    c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
                ):
                    self.seen.setdefault("ready", now)
            time.sleep(POLL_SECONDS)


def no_pods(core: client.CoreV1Api, selector: str) -> bool | None:
    return not core.list_namespaced_pod(NAMESPACE, label_selector=selector).items or None


def load_ms(core: client.CoreV1Api, pod: str) -> float:
    log = core.read_namespaced_pod_log(pod, NAMESPACE, container="runtime")
    found = LOADED.search(log)
    if found is None:
        raise RuntimeError(f"pod {pod} logged no load:\n{log[-2000:]}")
    return float(found.group(1)) * 1000


def one_round(core: client.CoreV1Api, gateway: str, selector: str) -> Round:
    wait_for("the server at zero pods", lambda: no_pods(core, selector), timeout=300)
    time.sleep(1)  # the node settles after the last pod's teardown
    started = time.perf_counter()
    watch = PodWatch(core, selector, started)
    watch.start()
    try:
        first = (first_token_at(gateway, MODEL, "Name three colours.", 4) - started) * 1000
    finally:
        watch.done.set()
        watch.join()
    if watch.name is None:
        raise RuntimeError("no runtime pod was seen")
    return Round(
        first_token_ms=first,
        load_ms=load_ms(core, watch.name),
        pod_ms=watch.seen.get("pod"),
        running_ms=watch.seen.get("running"),
        ready_ms=watch.seen.get("ready"),
    )


def prepared(stack: Stack) -> None:
    stack.apply_sample(NAMESPACE)
    stack.wait_ready("model", SERVER, NAMESPACE, timeout=600)
    stack.wait_ready("modelserver", SERVER, NAMESPACE, timeout=300)
    patch = f'{{"spec": {{"keepAliveSeconds": {KEEP_ALIVE_SECONDS}}}}}'
    stack.kubectl("patch", "modelserver", SERVER, "-n", NAMESPACE, "--type=merge", "-p", patch)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="cold starts")
    args = parser.parse_args()
    port = free_node_port()  # the gateway's NodePort, on 127.0.0.1
    rounds: list[Round] = []
    with (
        tempfile.TemporaryDirectory(prefix="corral-coldstart-cluster-") as tmp,
        running(Path(tmp) / "stack", gateway_port=port, values=VALUES) as stack,
    ):
        prepared(stack)
        core = client.CoreV1Api(config.new_client_from_config(str(stack.kubeconfig)))
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(SERVER).items())
        gateway = f"http://127.0.0.1:{port}"
        first_token_at(gateway, MODEL, "Hello", 1)  # the first pod's one-time costs
        for index in range(args.rounds):
            result = one_round(core, gateway, selector)
            rounds.append(result)
            print(
                f"round {index + 1}: pod {fmt(result.pod_ms)} ms, running "
                f"{fmt(result.running_ms)} ms, ready {fmt(result.ready_ms)} ms, first token "
                f"{result.first_token_ms:.0f} ms, load {result.load_ms:.0f} ms, beyond load "
                f"{result.beyond_load_ms:.0f} ms",
                flush=True,
            )

    def median(values: list[Any]) -> str:
        present = [v for v in values if v is not None]
        return fmt(statistics.median(present) if present else None)

    print(
        f"median: pod {median([r.pod_ms for r in rounds])} ms, running "
        f"{median([r.running_ms for r in rounds])} ms, ready "
        f"{median([r.ready_ms for r in rounds])} ms, first token "
        f"{median([r.first_token_ms for r in rounds])} ms, load "
        f"{median([r.load_ms for r in rounds])} ms"
    )
    print(f"cluster_first_token_minus_load_ms={median([r.beyond_load_ms for r in rounds])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
