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
context made), which its pods start at once (``CORRAL_PRELOAD``). The runtime's log, as the node
stamped it, adds its first line, its bind (``Uvicorn running on``) and the end of its load.

The node's own logs (the kubelet's at -v=4 and containerd's at debug level, which the bench asks
the node for: ``devstack.node.DEBUG_LOGS_ENV``) give where the container's start goes, each as ms
after the request and as the step from the one before (``devstack.podstart.PHASES``): the
kubelet's sync loop took the pod, its volumes mounted and then seen mounted by the pod worker,
the sandbox asked for, its network (CNI ADD) begun and done, the sandbox running, the container
created and started, and the runtime's first line. ``--quiet-node`` leaves the node at its usual
log levels (fewer phases known, less logging on the machine).

Each round then times the pod's teardown, once the keep-alive scales the server back to zero:
from its deletion (first seen with a deletionTimestamp) to the runtime's SIGTERM and its exit
(the lines ``SIGTERM: draining`` and ``Finished server process`` of its log, as the node stamped
them), to the container's exit as the API shows it, and to the pod object gone.

Prints each round's timeline, the medians, and last ``cluster_first_token_minus_load_ms=<x>``
(goal: at most 500). Needs root and the node's packages (``make node-deps``), as ``make up``; no
other stack may run (it takes the machine's one node).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # devstack and tests.support when run as a script

from corral_operator.builders.runtime import selector_labels  # noqa: E402
from devstack.node import DEBUG_LOGS_ENV, Node  # noqa: E402
from devstack.podstart import PHASES, pod_start_phases  # noqa: E402
from devstack.poll import wait_for  # noqa: E402
from devstack.stack import Stack, free_node_port, running  # noqa: E402
from tests.support.serveproc import first_token_at  # noqa: E402

NAMESPACE = "default"
SERVER = "gemma3-270m"
MODEL = SERVER  # the Model's own name routes (its served name is gemma3-270m:latest)
KEEP_ALIVE_SECONDS = 2
POLL_SECONDS = 0.05
LOADED = re.compile(r"loaded \S+ \(.*\) in ([0-9.]+)s")
# The runtime's log lines that mark its SIGTERM and its exit (shutdown.py, uvicorn).
SIGTERM_LINE, EXIT_LINE = "SIGTERM: draining", "Finished server process"
BOUND_LINE, LOADED_LINE = "Uvicorn running on", "corral_runtime.engine.manager: loaded "
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
    # From the runtime's log, as the node stamped it: its first line, the bind, the load's end.
    first_line_ms: float | None = None
    bound_ms: float | None = None
    loaded_ms: float | None = None
    # The node's steps (devstack.podstart.PHASES), from its logs, as ms after the request.
    node_ms: dict[str, float] = field(default_factory=dict)

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
        self.uid: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and "ready" not in self.seen:
            pods = self.core.list_namespaced_pod(NAMESPACE, label_selector=self.selector).items
            now = (time.perf_counter() - self.started) * 1000
            for pod in pods:
                self.name, self.uid = pod.metadata.name, pod.metadata.uid
                self.seen.setdefault("pod", now)
                statuses = pod.status.container_statuses or []
                if any(s.state and s.state.running for s in statuses):
                    self.seen.setdefault("running", now)
                if any(
                    c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
                ):
                    self.seen.setdefault("ready", now)
            time.sleep(POLL_SECONDS)


@dataclass(frozen=True, slots=True)
class Teardown:
    """A pod's removal, in ms from its deletion first seen (``None``: not seen)."""

    sigterm_ms: float | None  # the runtime logged its SIGTERM
    exit_logged_ms: float | None  # … its process finished
    exited_ms: float | None  # the API shows the container terminated
    gone_ms: float  # the pod object is gone
    log: str  # the runtime's whole log, with the node's timestamps


def logged_at(log: str, marker: str | None) -> float | None:
    """The wall-clock time (``time.time()``) of the first line of a log fetched with timestamps
    that holds ``marker`` (None: the first line)."""
    for line in log.splitlines():
        stamp, _, text = line.partition(" ")
        if marker is None or marker in text:
            # RFC 3339 with nanoseconds: microseconds are all fromisoformat reads.
            head, _, rest = stamp.rstrip("Z").partition(".")
            moment = datetime.datetime.fromisoformat(f"{head}.{rest[:6] or '0'}+00:00")
            return moment.timestamp()
    return None


class LogFollower(threading.Thread):
    """Follows a container's log, with the node's timestamps, until the container ends: one
    request, where polling would ask the kubelet many times while it tears the pod down."""

    def __init__(self, core: client.CoreV1Api, pod: str) -> None:
        super().__init__(daemon=True)
        self.core, self.pod = core, pod
        self.text = ""

    def run(self) -> None:
        with contextlib.suppress(client.ApiException, OSError):
            stream: Any = self.core.read_namespaced_pod_log(
                self.pod,
                NAMESPACE,
                container="runtime",
                follow=True,
                timestamps=True,
                _preload_content=False,
            )
            self.text = b"".join(stream.stream(65536)).decode(errors="replace")


def teardown(
    core: client.CoreV1Api, pod: str, follower: LogFollower, timeout: float = 300
) -> Teardown:
    """Follows ``pod`` (polled every 50 ms) from its deletion until it is gone, and its log
    (``follower``, started while the pod still ran)."""
    deleted_wall: float | None = None
    deleted = exited = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = core.read_namespaced_pod(pod, NAMESPACE)
        except client.ApiException as exc:
            if exc.status != 404:
                raise
            break
        now = time.perf_counter()
        if deleted is None and found.metadata and found.metadata.deletion_timestamp:
            deleted, deleted_wall = now, time.time()
        statuses = (found.status and found.status.container_statuses) or []
        if deleted is not None and any(s.state and s.state.terminated for s in statuses):
            exited = exited or now
        time.sleep(POLL_SECONDS)
    else:
        raise TimeoutError(f"pod {pod} still exists after {timeout:.0f}s")
    gone = time.perf_counter()
    if deleted is None or deleted_wall is None:
        raise RuntimeError(f"pod {pod} went without being seen deleted")
    follower.join(timeout=10)

    def since(at: float | None, origin: float) -> float | None:
        return None if at is None else (at - origin) * 1000

    return Teardown(
        sigterm_ms=since(logged_at(follower.text, SIGTERM_LINE), deleted_wall),
        exit_logged_ms=since(logged_at(follower.text, EXIT_LINE), deleted_wall),
        exited_ms=since(exited, deleted),
        gone_ms=(gone - deleted) * 1000,
        log=follower.text,
    )


def no_pods(core: client.CoreV1Api, selector: str) -> bool | None:
    return not core.list_namespaced_pod(NAMESPACE, label_selector=selector).items or None


def load_ms(log: str, pod: str) -> float:
    found = LOADED.search(log)
    if found is None:
        raise RuntimeError(f"pod {pod} logged no load:\n{log[-2000:]}")
    return float(found.group(1)) * 1000


def node_phases(node: Node, pod: str, uid: str | None, started_wall: float) -> dict[str, float]:
    """The node's steps in starting ``pod`` (``PHASES``), in ms after ``started_wall``."""
    if uid is None:
        return {}
    logs = {name: node.log_tail(name, size=1 << 30) for name in ("kubelet", "containerd")}
    year = datetime.datetime.fromtimestamp(started_wall).year
    phases = pod_start_phases(logs["kubelet"], logs["containerd"], pod, uid, "runtime", year)
    return {name: (at - started_wall) * 1000 for name, at in phases.items()}


def one_round(
    core: client.CoreV1Api, gateway: str, selector: str, node: Node
) -> tuple[Round, Teardown]:
    wait_for("the server at zero pods", lambda: no_pods(core, selector), timeout=300)
    time.sleep(1)  # the node settles after the last pod's teardown
    started, started_wall = time.perf_counter(), time.time()
    watch = PodWatch(core, selector, started)
    watch.start()
    try:
        first = (first_token_at(gateway, MODEL, "Name three colours.", 4) - started) * 1000
    finally:
        watch.done.set()
        watch.join()
    if watch.name is None:
        raise RuntimeError("no runtime pod was seen")
    # Followed from now: the server idles to zero within seconds, and a pod already gone
    # has no log left to read.
    follower = LogFollower(core, watch.name)
    follower.start()
    removal = teardown(core, watch.name, follower)
    loaded = load_ms(removal.log, watch.name)

    def logged(marker: str | None) -> float | None:
        at = logged_at(removal.log, marker)
        return None if at is None else (at - started_wall) * 1000

    started_round = Round(
        first_token_ms=first,
        load_ms=loaded,
        pod_ms=watch.seen.get("pod"),
        running_ms=watch.seen.get("running"),
        ready_ms=watch.seen.get("ready"),
        first_line_ms=logged(None),
        bound_ms=logged(BOUND_LINE),
        loaded_ms=logged(LOADED_LINE),
        node_ms=node_phases(node, watch.name, watch.uid, started_wall),
    )
    return started_round, removal


def prepared(stack: Stack) -> None:
    stack.apply_sample(NAMESPACE)
    stack.wait_ready("model", SERVER, NAMESPACE, timeout=600)
    stack.wait_ready("modelserver", SERVER, NAMESPACE, timeout=300)
    patch = f'{{"spec": {{"keepAliveSeconds": {KEEP_ALIVE_SECONDS}}}}}'
    stack.kubectl("patch", "modelserver", SERVER, "-n", NAMESPACE, "--type=merge", "-p", patch)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def timeline(result: Round) -> dict[str, float | None]:
    """A round's start, step by step in the order the pod takes them: the node's (``PHASES``),
    then the runtime's first line. (The polled pod object and its status come later than the
    kubelet's own stamps: the API shows the container running only after the kubelet's next
    relist, up to a second after it started.)"""
    return {
        **{name: result.node_ms.get(name) for name in PHASES},
        "runtime_first_line": result.first_line_ms,
    }


def steps(points: dict[str, float | None]) -> dict[str, float | None]:
    """Each point's time since the point before it that is known (``None``: not known), so a
    line of them says where the time goes."""
    out: dict[str, float | None] = {}
    before = 0.0
    for name, at in points.items():
        out[name] = None if at is None else at - before
        before = at if at is not None else before
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="cold starts")
    parser.add_argument(
        "--quiet-node",
        action="store_true",
        help="the node at its usual log levels (the kubelet at -v=1, containerd at info): fewer "
        "of its phases are known",
    )
    parser.add_argument(
        "--node-logs", type=Path, help="copy the node's logs (kubelet, containerd) here at the end"
    )
    args = parser.parse_args()
    os.environ[DEBUG_LOGS_ENV] = "0" if args.quiet_node else "1"
    port = free_node_port()  # the gateway's NodePort, on 127.0.0.1
    rounds: list[Round] = []
    teardowns: list[Teardown] = []
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
            result, removal = one_round(core, gateway, selector, stack.the_node)
            rounds.append(result)
            teardowns.append(removal)
            print(
                f"round {index + 1}: pod {fmt(result.pod_ms)} ms, running "
                f"{fmt(result.running_ms)} ms, logged first {fmt(result.first_line_ms)} ms, bound "
                f"{fmt(result.bound_ms)} ms, loaded {fmt(result.loaded_ms)} ms, ready "
                f"{fmt(result.ready_ms)} ms, first token "
                f"{result.first_token_ms:.0f} ms, load {result.load_ms:.0f} ms, beyond load "
                f"{result.beyond_load_ms:.0f} ms; teardown from deletion: SIGTERM "
                f"{fmt(removal.sigterm_ms)} ms, exit logged {fmt(removal.exit_logged_ms)} ms, "
                f"exited {fmt(removal.exited_ms)} ms, gone {removal.gone_ms:.0f} ms",
                flush=True,
            )
            at = ", ".join(f"{k} {fmt(v)}" for k, v in timeline(result).items())
            print(f"round {index + 1} start, ms after the request: {at}", flush=True)
        if args.node_logs:
            shutil.copytree(stack.the_node.logs, args.node_logs, dirs_exist_ok=True)

    def median(values: list[Any]) -> str:
        present = [v for v in values if v is not None]
        return fmt(statistics.median(present) if present else None)

    print(
        f"median: pod {median([r.pod_ms for r in rounds])} ms, running "
        f"{median([r.running_ms for r in rounds])} ms, logged first "
        f"{median([r.first_line_ms for r in rounds])} ms, bound "
        f"{median([r.bound_ms for r in rounds])} ms, loaded "
        f"{median([r.loaded_ms for r in rounds])} ms, ready "
        f"{median([r.ready_ms for r in rounds])} ms, first token "
        f"{median([r.first_token_ms for r in rounds])} ms, load "
        f"{median([r.load_ms for r in rounds])} ms"
    )
    print(
        f"median teardown from deletion: SIGTERM {median([t.sigterm_ms for t in teardowns])} ms, "
        f"exit logged {median([t.exit_logged_ms for t in teardowns])} ms, exited "
        f"{median([t.exited_ms for t in teardowns])} ms, gone "
        f"{median([t.gone_ms for t in teardowns])} ms"
    )
    lines = [timeline(r) for r in rounds]
    points = {name: median([line[name] for line in lines]) for name in lines[0]}
    gaps = [steps(line) for line in lines]
    taken = {name: median([gap[name] for gap in gaps]) for name in gaps[0]}
    print("median start, ms after the request: " + ", ".join(f"{k} {v}" for k, v in points.items()))
    print("median start, ms each step took: " + ", ".join(f"{k} {v}" for k, v in taken.items()))
    started = [
        r.node_ms["container_started"] - r.node_ms["kubelet_add"]
        for r in rounds
        if {"container_started", "kubelet_add"} <= r.node_ms.keys()
    ]
    # The API shows the container running only after the kubelet's next relist (every second).
    lag = [
        r.running_ms - r.node_ms["container_started"]
        for r in rounds
        if r.running_ms is not None and "container_started" in r.node_ms
    ]
    print(f"node_pod_to_container_started_ms={median(started)}")
    print(f"api_running_after_container_started_ms={median(lag)}")
    print(f"cluster_first_token_minus_load_ms={median([r.beyond_load_ms for r in rounds])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
