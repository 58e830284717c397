"""The node agent against the real control plane: Nodes, heartbeats, pods run as processes with
real IPs, readiness and Endpoints, restarts, Jobs, graceful deletion, GPU scheduling, claims and
clean-up after a crashed agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.support.nodeagent.kube import ignore_status, raw
from tests.support.nodeagent.network import list_netns

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class RunningAgent:
    proc: subprocess.Popen[str]
    node: str
    aid: str
    state_dir: Path
    marks: Path  # a directory pods write into through a hostPath volume

    def netns(self) -> list[str]:
        return [n for n in list_netns() if n.startswith(f"corral-{self.aid}-")]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def start_agent(kubeconfig: Path, tmp: Path, *extra: str) -> RunningAgent:
    tmp.mkdir(parents=True, exist_ok=True)
    node = f"na-{uuid.uuid4().hex[:8]}"
    marks = tmp / "marks"
    marks.mkdir(exist_ok=True)
    image_map = tmp / "images.json"
    image_map.write_text(
        json.dumps(
            {
                "images": {
                    "corral-test/http:1": {
                        "entrypoint": [sys.executable, "-m", "http.server"],
                        "cmd": ["8080"],
                    },
                    "corral-test/sh:1": {
                        "entrypoint": ["/bin/sh", "-c"],
                        "env": {"PY": sys.executable},
                    },
                }
            }
        )
    )
    with open(tmp / "agent.log", "a") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.nodeagent",
                "--kubeconfig",
                str(kubeconfig),
                "--node",
                node,
                "--image-map",
                str(image_map),
                "--state-dir",
                str(tmp / "state"),
                "--restart-backoff",
                "1",
                "--heartbeat",
                "2",
                "--shutdown-grace",
                "3",
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "node agent ready" not in line:
        proc.kill()
        raise AssertionError(f"agent did not start: {(tmp / 'agent.log').read_text()[-3000:]}")
    aid = line.split("agent ", 2)[2].split(";")[0]
    return RunningAgent(proc, node, aid, tmp / "state", marks)


def stop_agent(agent: RunningAgent) -> None:
    if agent.proc.poll() is None:
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.wait(timeout=60)
    if agent.proc.stdout is not None:
        agent.proc.stdout.close()


@pytest.fixture
def node_agent(kubeconfig: Path, tmp_path: Path) -> Iterator[RunningAgent]:
    agent = start_agent(kubeconfig, tmp_path, "--gpus", "2")
    try:
        yield agent
    finally:
        stop_agent(agent)
    assert agent.proc.returncode == 0
    assert agent.netns() == [], "the agent left network namespaces behind"


@pytest.fixture
def core(k8s_client: Any) -> Any:
    return client.CoreV1Api(k8s_client)


def pod_manifest(
    name: str, agent: RunningAgent, container: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": agent.node},
            "containers": [{"name": "main", **container}],
            **spec,
        },
    }


def marks_volume(agent: RunningAgent) -> dict[str, Any]:
    return {"name": "marks", "hostPath": {"path": str(agent.marks)}}


def create_pod(core: Any, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create a pod, waiting out the moments before a new namespace has its token secret."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return raw(core.create_namespaced_pod, namespace, body)
        except ApiException as error:
            if "No API token found" not in str(error.body) or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def get_pod(core: Any, namespace: str, name: str) -> dict[str, Any]:
    return raw(core.read_namespaced_pod, name, namespace)


def http_get(url: str) -> str:
    with NO_PROXY.open(url, timeout=3) as response:
        return str(response.read().decode())


HTTP_READY = {
    "image": "corral-test/http:1",
    "ports": [{"name": "http", "containerPort": 8080}],
    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
}


# -- tests -----------------------------------------------------------------------------------


def test_node_registers_and_keeps_its_heartbeat(
    node_agent: RunningAgent, core: Any, k8s_client: Any
) -> None:
    node = raw(core.read_node, node_agent.node)
    status = node["status"]
    assert status["capacity"]["nvidia.com/gpu"] == "2"
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    address = status["addresses"][0]["address"]
    assert address.startswith("10.244.") and address.endswith(".1")
    leases = client.CoordinationV1Api(k8s_client)
    first = raw(leases.read_namespaced_lease, node_agent.node, "kube-node-lease")["spec"]
    renewed = wait_for(
        "lease renewal",
        lambda: (
            raw(leases.read_namespaced_lease, node_agent.node, "kube-node-lease")["spec"][
                "renewTime"
            ]
            != first["renewTime"]
        ),
        timeout=15,
    )
    assert renewed


def test_deployment_pods_get_real_ips_readiness_and_endpoints(
    node_agent: RunningAgent, namespace: str, core: Any, k8s_client: Any
) -> None:
    apps = client.AppsV1Api(k8s_client)
    template = pod_manifest(
        "web",
        node_agent,
        {
            **HTTP_READY,
            "image": "corral-test/sh:1",
            "args": [
                'echo "$POD $IP" > "$WWW/env.txt" && exec "$PY" -m http.server 8080 '
                '--directory "$WWW"'
            ],
            "env": [
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "WWW", "value": "/srv/www"},
            ],
            "volumeMounts": [{"name": "www", "mountPath": "/srv/www"}],
        },
        volumes=[{"name": "www", "emptyDir": {}}],
    )
    raw(
        apps.create_namespaced_deployment,
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": template["metadata"], "spec": template["spec"]},
            },
        },
    )
    raw(
        core.create_namespaced_service,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )

    def endpoint_ips() -> list[str]:
        endpoints = ignore_status((404,), core.read_namespaced_endpoints, "web", namespace)
        subsets = (endpoints or {}).get("subsets") or []
        ips = sorted(a["ip"] for s in subsets for a in s.get("addresses") or [])
        return ips if len(ips) == 2 else []

    ips = wait_for("two ready endpoints", endpoint_ips)
    pods = raw(core.list_namespaced_pod, namespace)["items"]
    assert sorted(p["status"]["podIP"] for p in pods) == ips
    for pod in pods:
        status = pod["status"]
        assert status["phase"] == "Running"
        assert status["hostIP"] != status["podIP"] and not status["podIP"].startswith("127.")
        assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
        served = http_get(f"http://{status['podIP']}:8080/env.txt").split()
        assert served == [pod["metadata"]["name"], status["podIP"]]


def test_crashing_container_is_restarted_and_reported(
    node_agent: RunningAgent, namespace: str, core: Any
) -> None:
    create_pod(
        core,
        namespace,
        pod_manifest(
            "crash", node_agent, {"image": "corral-test/sh:1", "args": ["echo boom; exit 3"]}
        ),
    )

    def restarted_twice() -> dict[str, Any] | None:
        statuses = get_pod(core, namespace, "crash")["status"].get("containerStatuses") or []
        if not statuses or statuses[0]["restartCount"] < 2:
            return None
        backing_off = statuses[0]["state"].get("waiting", {}).get("reason")
        return statuses[0] if backing_off == "CrashLoopBackOff" else None

    status = wait_for("two restarts and a back-off", restarted_twice)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert not status["ready"]
    pod = get_pod(core, namespace, "crash")
    assert pod["status"]["phase"] == "Running"  # restartPolicy Always keeps it Running
    log = next(node_agent.state_dir.glob(f"pods/{namespace}_crash_*/logs/main.log")).read_text()
    assert log.count("boom") >= 3


def test_jobs_complete_on_exit_zero_and_fail_on_error(
    node_agent: RunningAgent, namespace: str, k8s_client: Any, core: Any
) -> None:
    batch = client.BatchV1Api(k8s_client)

    def job(name: str, script: str) -> dict[str, Any]:
        pod = pod_manifest(
            name, node_agent, {"image": "corral-test/sh:1", "args": [script]}, restartPolicy="Never"
        )
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name},
            "spec": {"backoffLimit": 0, "template": {"spec": pod["spec"]}},
        }

    raw(batch.create_namespaced_job, namespace, job("ok", "exit 0"))
    raw(batch.create_namespaced_job, namespace, job("bad", "exit 7"))
    wait_for(
        "job ok to succeed",
        lambda: (
            raw(batch.read_namespaced_job, "ok", namespace).get("status", {}).get("succeeded") == 1
        ),
    )
    wait_for(
        "job bad to fail",
        lambda: (
            raw(batch.read_namespaced_job, "bad", namespace).get("status", {}).get("failed") == 1
        ),
    )
    phases = {
        p["metadata"]["labels"]["job-name"]: p["status"]
        for p in raw(core.list_namespaced_pod, namespace)["items"]
    }
    assert phases["ok"]["phase"] == "Succeeded"
    assert phases["bad"]["phase"] == "Failed"
    assert phases["bad"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 7


def test_termination_message_is_reported(
    node_agent: RunningAgent, namespace: str, core: Any
) -> None:
    # Each container writes its own file: the path named in args and env is a private one.
    script = 'printf "%s" "$RESULT" > "$1"; exit 3'
    for name, path in (("named", "/tmp/result"), ("default", None)):
        container: dict[str, Any] = {
            "image": "corral-test/sh:1",
            "args": [script, "sh", path or "/dev/termination-log"],
            "env": [{"name": "RESULT", "value": f'{{"pod": "{name}"}}'}],
        }
        if path:
            container["terminationMessagePath"] = path
        create_pod(
            core, namespace, pod_manifest(name, node_agent, container, restartPolicy="Never")
        )

    def message(name: str) -> str | None:
        statuses = get_pod(core, namespace, name).get("status", {}).get("containerStatuses")
        terminated = (statuses or [{}])[0].get("state", {}).get("terminated")
        return None if terminated is None else str(terminated.get("message", ""))

    assert wait_for("named's message", lambda: message("named")) == '{"pod": "named"}'
    assert wait_for("default's message", lambda: message("default")) == '{"pod": "default"}'
    assert not Path("/tmp/result").exists() or "named" not in Path("/tmp/result").read_text()
    assert not Path("/dev/termination-log").exists()


def test_deleting_a_pod_sends_sigterm_then_sigkill_after_the_grace_period(
    node_agent: RunningAgent, namespace: str, core: Any
) -> None:
    marks = "/marks"
    # Mounts are honoured by rewriting whole-path values (see podspec), so the scripts read
    # the mount path from an env var rather than from inside the shell text.
    polite = pod_manifest(
        "polite",
        node_agent,
        {
            "image": "corral-test/sh:1",
            "env": [{"name": "M", "value": marks}],
            "args": [
                'trap \'echo term > "$M/polite"; exit 0\' TERM; echo $$$$ > "$M/polite.pid"; '
                "while :; do sleep 0.1; done"
            ],
            "volumeMounts": [{"name": "marks", "mountPath": marks}],
        },
        volumes=[marks_volume(node_agent)],
        terminationGracePeriodSeconds=30,
    )
    stubborn = pod_manifest(
        "stubborn",
        node_agent,
        {
            "image": "corral-test/sh:1",
            "env": [{"name": "M", "value": marks}],
            "args": ["trap '' TERM; echo $$$$ > \"$M/stubborn.pid\"; while :; do sleep 0.1; done"],
            "volumeMounts": [{"name": "marks", "mountPath": marks}],
        },
        volumes=[marks_volume(node_agent)],
        terminationGracePeriodSeconds=2,
    )
    for pod in (polite, stubborn):
        create_pod(core, namespace, pod)
    pids = {
        name: int(wait_for(f"{name} to start", partial(_read, node_agent.marks / f"{name}.pid")))
        for name in ("polite", "stubborn")
    }

    started = time.monotonic()
    for name in pids:
        core.delete_namespaced_pod(name, namespace)
    wait_for(
        "pods to be gone", lambda: not raw(core.list_namespaced_pod, namespace)["items"], timeout=30
    )
    assert (node_agent.marks / "polite").read_text().strip() == "term"
    assert time.monotonic() - started < 20  # the stubborn one was killed after its 2 s
    for pid in pids.values():
        assert not _alive(pid)


def test_gpu_capacity_limits_scheduling(
    node_agent: RunningAgent, namespace: str, core: Any
) -> None:
    for index in range(3):
        create_pod(
            core,
            namespace,
            pod_manifest(
                f"gpu-{index}",
                node_agent,
                {**HTTP_READY, "resources": {"limits": {"nvidia.com/gpu": "1"}}},
            ),
        )

    def phases() -> list[str]:
        pods = raw(core.list_namespaced_pod, namespace)["items"]
        found = sorted(p["status"].get("phase", "") for p in pods)
        return found if found == ["Pending", "Running", "Running"] else []

    wait_for("two GPU pods running, one pending", phases)
    pending = next(
        p
        for p in raw(core.list_namespaced_pod, namespace)["items"]
        if p["status"]["phase"] == "Pending"
    )
    scheduled = {c["type"]: c for c in pending["status"]["conditions"]}["PodScheduled"]
    assert scheduled["status"] == "False" and scheduled["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in scheduled["message"]


def test_unmapped_image_fails_with_a_clear_message(
    node_agent: RunningAgent, namespace: str, core: Any
) -> None:
    create_pod(
        core,
        namespace,
        pod_manifest(
            "nomap", node_agent, {"image": "example.org/not-mapped:1"}, restartPolicy="Never"
        ),
    )
    pod = wait_for(
        "pod to fail",
        lambda: (p := get_pod(core, namespace, "nomap"))["status"].get("phase") == "Failed" and p,
    )
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "ContainerCannotRun"
    assert "example.org/not-mapped:1" in terminated["message"]


def test_claims_bind_to_a_shared_local_directory(
    node_agent: RunningAgent, namespace: str, core: Any
) -> None:
    raw(
        core.create_namespaced_persistent_volume_claim,
        namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "cache"},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )

    def step(name: str, script: str) -> dict[str, Any]:
        return pod_manifest(
            name,
            node_agent,
            {
                "image": "corral-test/sh:1",
                "args": [script],
                "env": [{"name": "CACHE", "value": "/var/cache/models"}],
                "volumeMounts": [{"name": "cache", "mountPath": "/var/cache/models"}],
            },
            restartPolicy="Never",
            volumes=[{"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}}],
        )

    create_pod(core, namespace, step("writer", 'echo blob > "$CACHE/b"'))
    wait_for(
        "writer to succeed",
        lambda: get_pod(core, namespace, "writer")["status"].get("phase") == "Succeeded",
    )
    create_pod(core, namespace, step("reader", 'test "$(cat "$CACHE/b")" = blob'))
    wait_for(
        "reader to succeed",
        lambda: get_pod(core, namespace, "reader")["status"].get("phase") == "Succeeded",
    )
    claim = raw(core.read_namespaced_persistent_volume_claim, "cache", namespace)
    assert claim["status"]["phase"] == "Bound"
    volume = raw(core.read_persistent_volume, claim["spec"]["volumeName"])
    assert (Path(volume["spec"]["hostPath"]["path"]) / "b").read_text() == "blob\n"


def test_a_crashed_agent_is_cleaned_up_by_the_next_one(
    kubeconfig: Path, tmp_path: Path, namespace: str, core: Any
) -> None:
    first = start_agent(kubeconfig, tmp_path / "first")
    try:
        create_pod(
            core,
            namespace,
            pod_manifest(
                "orphan",
                first,
                {
                    "image": "corral-test/sh:1",
                    "args": ['echo $$$$ > "$M/orphan.pid"; exec sleep 600'],
                    "env": [{"name": "M", "value": "/marks"}],
                    "volumeMounts": [{"name": "marks", "mountPath": "/marks"}],
                },
                volumes=[marks_volume(first)],
            ),
        )
        pid = int(wait_for("orphan to start", lambda: _read(first.marks / "orphan.pid")))
    finally:
        first.proc.kill()  # a crash: no chance to clean up
        stop_agent(first)
    assert first.netns() and _alive(pid)  # what a crash leaves behind

    second = start_agent(kubeconfig, tmp_path / "second")
    try:
        assert first.netns() == []
        assert not _alive(pid)
    finally:
        stop_agent(second)
        ignore_status((404,), core.delete_node, first.node)
    assert second.netns() == []


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )
