"""Helpers for the operator's cluster tests: the operator as a subprocess, a stand-in for the
kubelet (nothing runs pods on the test control plane), and polling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client

from devstack import poll
from devstack.controlplane import free_port

T = TypeVar("T")
CRDS = Path(__file__).resolve().parents[3] / "crds"
GEMMA_RESULT = {
    "name": "gemma3:270m",
    "digest": "sha256:" + "ab" * 32,
    "sizeBytes": 253113024,
    "format": "gguf",
    "family": "gemma3",
    "parameterSize": "268.10M",
    "quantization": "Q4_K_M",
    "contextLength": 32768,
}


def wait_for(check: Callable[[], T | None], timeout: float = 20.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy."""
    return poll.wait_for(what or repr(check), check, timeout)


def terminate(proc: subprocess.Popen[Any], grace: float, reap: float) -> None:
    """SIGTERM a process, SIGKILL it after ``grace`` seconds, wait ``reap`` for the end."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(reap)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Operator:
    """``corral-operator`` in a subprocess, watching one namespace."""

    def __init__(
        self, kubeconfig: Path, namespace: str, log_dir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        port = free_port()
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "CORRAL_OPERATOR_NAMESPACES": self.namespace,
            "CORRAL_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz",
            **self.env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral_operator.main"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"operator exited: {self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(healthy, 30, "the operator's liveness endpoint")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=15, reap=5)

    def kill(self) -> None:
        """Stop abruptly, as a crashed or evicted operator would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log"))
        )


class Cluster:
    """Typed shortcuts over the API for the tests."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.ns = api, namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # -- corral objects ---------------------------------------------------------------------

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "corral.dev/v1alpha1", **body}
        body["metadata"] = {"namespace": self.ns, **body["metadata"]}
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            "corral.dev", "v1alpha1", self.ns, plural, body
        )
        return result

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                "corral.dev", "v1alpha1", self.ns, plural, name
            )
            return result
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            "corral.dev", "v1alpha1", self.ns, plural, name, body
        )

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object("corral.dev", "v1alpha1", self.ns, plural, name)

    def condition(self, plural: str, name: str, type_: str) -> dict[str, Any] | None:
        obj = self.get(plural, name) or {}
        for cond in (obj.get("status") or {}).get("conditions") or ():
            if cond["type"] == type_:
                return dict(cond)
        return None

    def wait_condition(
        self,
        plural: str,
        name: str,
        type_: str,
        status: str,
        reason: str | None = None,
        timeout: float = 20,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            cond = self.condition(plural, name, type_)
            if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
                return cond
            return None

        return wait_for(check, timeout, f"{plural}/{name} {type_}={status} ({reason})")

    # -- playing the kubelet ----------------------------------------------------------------

    def job_pods(self, selector: str) -> list[client.V1Pod]:
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def finish_pod(self, pod: client.V1Pod, *, exit_code: int, message: str) -> None:
        """Report a Job's pod as finished with a termination message, as a kubelet would."""
        container = pod.spec.containers[0]
        stamp = now()
        self.core.patch_namespaced_pod_status(
            pod.metadata.name,
            self.ns,
            {
                "status": {
                    "phase": "Succeeded" if exit_code == 0 else "Failed",
                    "containerStatuses": [
                        {
                            "name": container.name,
                            "image": container.image,
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {
                                "terminated": {
                                    "exitCode": exit_code,
                                    "reason": "Completed" if exit_code == 0 else "Error",
                                    "message": message,
                                    "startedAt": stamp,
                                    "finishedAt": stamp,
                                }
                            },
                        }
                    ],
                }
            },
        )

    def play_pull(
        self, model: str, result: Mapping[str, Any] | None = None, exit_code: int = 0
    ) -> str:
        """Finish the current pull Job's pod of ``model``; returns the Job's name."""
        job = wait_for(
            lambda: (self.get("models", model) or {}).get("status", {}).get("pullJob"),
            20,
            f"the pull Job of {model}",
        )
        pod = wait_for(lambda: self.job_pods(f"job-name={job}"), 20, f"a pod of Job {job}")[0]
        self.finish_pod(pod, exit_code=exit_code, message=json.dumps(dict(result or GEMMA_RESULT)))
        return str(job)

    def finish_gc_pods(self) -> int:
        """Finish every pending collect Job pod successfully; returns how many."""
        pods = [
            p
            for p in self.job_pods("app.kubernetes.io/component=gc")
            if p.status.phase not in ("Succeeded", "Failed")
        ]
        for pod in pods:
            self.finish_pod(pod, exit_code=0, message="")
        return len(pods)

    def ready_model(
        self, name: str, source: str = "gemma3:270m", result: Mapping[str, Any] | None = None
    ) -> None:
        self.create(
            "models", {"kind": "Model", "metadata": {"name": name}, "spec": {"source": source}}
        )
        self.play_pull(name, result)
        self.wait_condition("models", name, "Ready", "True")

    # -- nodes and volumes (cluster-scoped: the tests remove what they create) --------------

    def add_node(
        self,
        name: str,
        *,
        gpus: int = 0,
        labels: Mapping[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
    ) -> None:
        self.core.create_node(
            {
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                },
                "spec": {"taints": taints or []},
            }
        )
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        stamp = now()
        self.core.patch_node_status(
            name,
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "test node",
                            "lastHeartbeatTime": stamp,
                            "lastTransitionTime": stamp,
                        }
                    ],
                }
            },
        )

    def bind_cache_volume(self, pv_name: str, claim: str = "corral-cache-default") -> None:
        """A PersistentVolume for the cache claim (there is no provisioner on this cluster)."""
        self.core.create_persistent_volume(
            {
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": {"storage": "50Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/{pv_name}"},
                    "claimRef": {"namespace": self.ns, "name": claim},
                },
            }
        )


# -- pods that really run -------------------------------------------------------------------


class NodeAgent:
    """The test node agent (``tests.support.nodeagent``) in a subprocess: one Node whose pods run
    as local processes, images mapped to local commands by ``images`` (an image map)."""

    def __init__(self, kubeconfig: Path, state_dir: Path, images: Mapping[str, Any]) -> None:
        self.kubeconfig, self.state_dir = kubeconfig, state_dir
        self.images = dict(images)
        self.node = f"op-{os.urandom(4).hex()}"
        self.address = ""
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        image_map = self.state_dir / "images.json"
        image_map.write_text(json.dumps({"images": self.images}))
        argv = [sys.executable, "-m", "tests.support.nodeagent", "--kubeconfig"]
        argv += [str(self.kubeconfig), "--node", self.node, "--image-map", str(image_map)]
        argv += ["--state-dir", str(self.state_dir / "state"), "--heartbeat", "2"]
        argv += ["--restart-backoff", "1", "--shutdown-grace", "3"]
        with open(self.state_dir / "agent.log", "a") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=Path(__file__).resolve().parents[3],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.proc.stdout is not None
        # "node agent ready: agent <id>; <node>=<address> pods <cidr>; logs under <dir>"
        line = self.proc.stdout.readline()
        if "node agent ready" not in line:
            self.stop()
            raise AssertionError(f"node agent did not start: {self.log()[-3000:]}")
        self.address = line.split(f"{self.node}=", 1)[1].split()[0]

    def stop(self) -> None:
        if self.proc is None:
            return
        terminate(self.proc, grace=60, reap=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def log(self) -> str:
        return (self.state_dir / "agent.log").read_text(errors="replace")
