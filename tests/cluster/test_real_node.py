"""What a real kubelet and kube-proxy do to corral's pods, on the devstack node (containerd, the
kubelet, kube-proxy in iptables mode, a CNI bridge, two fake GPUs, a hostPath provisioner).

Each of these needs the real parts: a container runtime (a uid from the image, a read-only root,
seccomp, a memory cgroup), kube-proxy (ClusterIPs), a scheduler and kubelet that count extended
resources, and volumes mounted from claims. Every pod here runs from the images built from this
tree; the operator runs on the host, as in the rest of the cluster tier.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client

from devstack.controlplane import ControlPlane
from devstack.node import NODE_IP, PAUSE_IMAGE, Node
from devstack.operator import Operator
from devstack.stack import SEED_CLAIM, Stack
from tests.cluster.operator.support import Cluster, wait_for
from tests.conftest import TOOLS_BIN, KubectlRunner

pytestmark = pytest.mark.cluster
T = TypeVar("T")

RUNTIME_IMAGE = "ghcr.io/corral-dev/corral-runtime:0.1.0"
RUNTIME_UID = 65532
PORT = 11434
MODEL = "gemma"
CACHE_CLAIM = "corral-cache-default"
# Labels of the gateway's pods: the runtime's NetworkPolicy admits them.
GATEWAY_LABELS = {"app.kubernetes.io/name": "corral", "app.kubernetes.io/component": "gateway"}
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


# -- helpers -----------------------------------------------------------------------------------


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 120) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def answers(url: str) -> dict[str, Any] | None:
    """``/api/version`` at ``url``, or None while nothing answers there yet."""
    try:
        return dict(http_json(f"{url}/api/version", timeout=5))
    except OSError:
        return None


def proc_status(pid: int) -> dict[str, str]:
    """``/proc/<pid>/status`` as a mapping (the host's view of a container's process)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            queue += [int(child) for child in task.read_text().split()]
    return found


def volume_directory(cluster: Cluster, claim: str) -> Path:
    """The directory on this machine behind a claim the node's provisioner bound."""
    pvc = cluster.core.read_namespaced_persistent_volume_claim(claim, cluster.ns)
    pv = cluster.core.read_persistent_volume(pvc.spec.volume_name)
    return Path(pv.spec.host_path.path)


def explain(cluster: Cluster) -> str:
    """The namespace's pods and events, for a failure message."""
    pods = [
        f"{p.metadata.name}: {p.status.phase} {p.status.conditions} {p.status.container_statuses}"
        for p in cluster.core.list_namespaced_pod(cluster.ns).items
    ]
    events = [
        f"{e.involved_object.kind}/{e.involved_object.name}: {e.reason}: {e.message}"
        for e in cluster.core.list_namespaced_event(cluster.ns).items
    ]
    return "\n".join([*pods, *events])


def wait_in(cluster: Cluster, check: Callable[[], T | None], timeout: float, what: str) -> T:
    """``wait_for``, failing with what the namespace's pods and events say."""
    try:
        return wait_for(check, timeout, what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{explain(cluster)}") from None


def wait_condition(
    cluster: Cluster,
    plural: str,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """``Cluster.wait_condition``, failing with the object's status and the namespace's pods."""
    try:
        return cluster.wait_condition(plural, name, type_, status, reason, timeout)
    except TimeoutError as exc:
        current = (cluster.get(plural, name) or {}).get("status")
        raise AssertionError(f"{exc}\nstatus: {current}\n{explain(cluster)}") from None


def container_state(cluster: Cluster, pod: str) -> client.V1ContainerStatus | None:
    statuses = cluster.core.read_namespaced_pod(pod, cluster.ns).status.container_statuses
    return statuses[0] if statuses else None


def ready_pod(cluster: Cluster, server: str, timeout: float = 300) -> client.V1Pod:
    """A ready runtime pod of ``server`` (not one being deleted)."""

    def check() -> client.V1Pod | None:
        for pod in cluster.job_pods(f"corral.dev/modelserver={server}"):
            if pod.metadata.deletion_timestamp:
                continue
            if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ()):
                return pod
        return None

    return wait_in(cluster, check, timeout, f"a ready runtime pod of {server}")


def generates(base_url: str, model: str, prompt: str, tokens: int) -> None:
    """A raw, greedy ``/api/generate`` at ``base_url`` answers, done, with some text."""
    answer = http_json(
        f"{base_url}/api/generate",
        {
            "model": model,
            "prompt": prompt,
            "raw": True,
            "stream": False,
            "options": {"num_predict": tokens, "temperature": 0},
        },
    )
    assert answer["done"] is True and answer["response"].strip()


def served_name(cluster: Cluster, server: str) -> str:
    status = (cluster.get("modelservers", server) or {}).get("status") or {}
    return str(status["models"][0]["name"])


def create_server(cluster: Cluster, name: str, memory: str = "1Gi", **spec: Any) -> None:
    resources = {"cpu": "100m", "memory": memory, **spec.pop("resources", {})}
    cluster.create(
        "modelservers",
        {
            "kind": "ModelServer",
            "metadata": {"name": name},
            "spec": {
                "models": [MODEL],
                "minReplicas": 1,
                "maxReplicas": 1,
                "resources": resources,
                "runtime": {"contextLength": 1024, "parallel": 1},
                **spec,
            },
        },
    )


def exec_in(
    kubectl: KubectlRunner, ns: str, pod: str, *argv: str
) -> subprocess.CompletedProcess[str]:
    return kubectl("exec", "-n", ns, pod, "--", *argv)


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def seeded(control_plane: ControlPlane, node: Node, namespace: str, tmp_path: Path) -> Path:
    """The bundled GGUF on the claim ``corral-seed`` (made and bound by the node's provisioner),
    as ``make up`` seeds the sample's claim."""
    return Stack(tmp_path / "stack", plane=control_plane, node=node).seed(namespace)


@pytest.fixture
def operator(
    kubeconfig: Path, namespace: str, cluster: Cluster, node: Node, tmp_path: Path
) -> Iterator[Operator]:
    """The operator on the host, resyncing every 2s (what it reads from pods has no watch)."""
    op = Operator(kubeconfig, namespace, tmp_path, {"CORRAL_OPERATOR_RESYNC_SECONDS": "2"})
    op.start()
    try:
        yield op
    finally:
        for plural in ("modelservers", "models"):
            for obj in cluster.custom.list_namespaced_custom_object(
                "corral.dev", "v1alpha1", namespace, plural
            )["items"]:
                cluster.delete(plural, obj["metadata"]["name"])
        try:
            # Each Model's collect Job runs on the node before its finalizer goes.
            wait_for(
                lambda: (
                    not cluster.custom.list_namespaced_custom_object(
                        "corral.dev", "v1alpha1", namespace, "models"
                    )["items"]
                ),
                120,
                "Models deleted",
            )
        finally:
            op.stop()


@pytest.fixture
def model(cluster: Cluster, operator: Operator, seeded: Path) -> dict[str, Any]:
    """The Model ``gemma`` pulled from the seed claim by its pull Job, Ready."""
    cluster.create(
        "models",
        {
            "kind": "Model",
            "metadata": {"name": MODEL},
            "spec": {"source": f"pvc://{SEED_CLAIM}/{seeded.name}"},
        },
    )
    wait_condition(cluster, "models", MODEL, "Ready", "True", timeout=300)
    return cluster.get("models", MODEL) or {}


@pytest.fixture
def server(cluster: Cluster, model: dict[str, Any]) -> client.V1Pod:
    """ModelServer ``srv`` serving the Model with one replica; returns its ready pod."""
    create_server(cluster, "srv")
    pod = ready_pod(cluster, "srv")
    wait_condition(cluster, "modelservers", "srv", "Ready", "True", "Available", timeout=60)
    return pod


# -- 1. the kubelet enforces the pod security context -------------------------------------------


def test_run_as_non_root_refuses_a_root_image_and_runs_the_restricted_runtime(
    cluster: Cluster, node: Node, kubectl: KubectlRunner
) -> None:
    # The image's user is 65532; asking for uid 0 under runAsNonRoot is what the kubelet (not
    # the API server) refuses, when it builds the container's configuration.
    root = {
        "metadata": {"name": "root"},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True},
            "containers": [
                {
                    "name": "runtime",
                    "image": RUNTIME_IMAGE,
                    "imagePullPolicy": "Never",
                    "securityContext": {"runAsUser": 0},
                }
            ],
        },
    }
    restricted = {
        "metadata": {"name": "restricted"},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "runtime",
                    "image": RUNTIME_IMAGE,
                    "imagePullPolicy": "Never",
                    "env": [{"name": "CORRAL_MODELS", "value": "/tmp/models"}],
                    "securityContext": RESTRICTED_CONTAINER,
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }
    cluster.core.create_namespaced_pod(cluster.ns, root)
    cluster.core.create_namespaced_pod(cluster.ns, restricted)

    def refused() -> client.V1ContainerStateWaiting | None:
        state = container_state(cluster, "root")
        waiting = state.state.waiting if state else None
        return waiting if waiting and waiting.reason == "CreateContainerConfigError" else None

    waiting = wait_in(cluster, refused, 120, "the kubelet to refuse the root container")
    assert "container's runAsUser breaks non-root policy" in waiting.message

    def running() -> client.V1ContainerStatus | None:
        state = container_state(cluster, "restricted")
        return state if state and state.state.running else None

    status = wait_in(cluster, running, 120, "the restricted runtime container running")
    # The process the kubelet started, seen from the host: the image's user, no privileges.
    proc = proc_status(node.container_pid(status.container_id))
    assert proc["Uid"].split() == [str(RUNTIME_UID)] * 4
    # The image's group too, though the pod names no runAsGroup (the image lists the user).
    assert proc["Gid"].split() == [str(RUNTIME_UID)] * 4
    assert proc["NoNewPrivs"] == "1"
    assert proc["Seccomp"] == "2"  # filtered: the runtime's default profile
    assert int(proc["CapEff"], 16) == 0 and int(proc["CapBnd"], 16) == 0
    pod_ip = cluster.core.read_namespaced_pod("restricted", cluster.ns).status.pod_ip
    version = wait_for(lambda: answers(f"http://{pod_ip}:{PORT}"), 60, "corral serve answering")
    assert version["version"]
    uid = exec_in(kubectl, cluster.ns, "restricted", "id", "-u")
    assert uid.stdout.strip() == str(RUNTIME_UID), uid.stderr
    # The root container never started: nothing ran, it only waits.
    assert container_state(cluster, "root").state.running is None  # type: ignore[union-attr]


# -- 2. a read-only root: the runtime writes only to its volumes ---------------------------------


def test_read_only_root_serves_from_the_claim(
    cluster: Cluster,
    node: Node,
    kubectl: KubectlRunner,
    model: dict[str, Any],
    server: client.V1Pod,
) -> None:
    name, ns = server.metadata.name, cluster.ns
    root = exec_in(kubectl, ns, name, "touch", "/probe")
    assert root.returncode != 0 and "Read-only file system" in root.stderr
    models = exec_in(kubectl, ns, name, "touch", "/models/probe")
    assert models.returncode != 0 and "Read-only file system" in models.stderr
    scratch = exec_in(kubectl, ns, name, "touch", "/tmp/probe")
    assert scratch.returncode == 0, scratch.stderr

    # The root mount of the container's process is read-only, as the host sees it.
    pid = node.container_pid(server.status.container_statuses[0].container_id)
    mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
    root_mount = next(m.split() for m in mounts if m.split()[4] == "/")
    assert "ro" in root_mount[5].split(",")

    # The store the runtime reads is the cache claim's directory on the node.
    blob = "sha256-" + model["status"]["digest"].removeprefix("sha256:")
    assert (volume_directory(cluster, CACHE_CLAIM) / "blobs" / blob).is_file()
    listed = exec_in(kubectl, ns, name, "ls", "/models/blobs")
    assert blob in listed.stdout.split(), listed.stderr
    generates(
        f"http://{server.status.pod_ip}:{PORT}",
        served_name(cluster, "srv"),
        "The capital of France is",
        8,
    )


# -- 3. a ClusterIP through kube-proxy ---------------------------------------------------------


def test_cluster_ip_routes_through_kube_proxy(
    cluster: Cluster, server: client.V1Pod, kubectl: KubectlRunner
) -> None:
    service = cluster.core.read_namespaced_service("corral-srv", cluster.ns)
    cluster_ip = service.spec.cluster_ip
    assert cluster_ip and cluster_ip != server.status.pod_ip

    # kube-proxy writes the Service's rules (its comment names namespace/service:port) at its
    # next sync after the Service appears.
    def rules_written() -> bool:
        nat = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True).stdout
        return f"{cluster.ns}/corral-srv:" in nat and f"-d {cluster_ip}/32" in nat

    assert wait_for(rules_written, 30, "kube-proxy's rules for the Service")

    url = f"http://{cluster_ip}:{PORT}"
    assert wait_for(lambda: answers(url), 30, "the ClusterIP answering from the host")
    generates(url, served_name(cluster, "srv"), "One, two, three,", 6)

    # From another pod (labelled as the gateway, which the runtime's NetworkPolicy admits).
    fetch = (
        "import sys, urllib.request;"
        "print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode())"
    )
    cluster.core.create_namespaced_pod(
        cluster.ns,
        {
            "metadata": {"name": "client", "labels": GATEWAY_LABELS},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": RESTRICTED_POD,
                "containers": [
                    {
                        "name": "client",
                        "image": RUNTIME_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", fetch, f"{url}/api/version"],
                        "securityContext": RESTRICTED_CONTAINER,
                    }
                ],
            },
        },
    )
    phase = wait_in(
        cluster,
        lambda: (
            p
            if (p := cluster.core.read_namespaced_pod("client", cluster.ns).status.phase)
            in ("Succeeded", "Failed")
            else None
        ),
        120,
        "the client pod to finish",
    )
    log = kubectl("logs", "-n", cluster.ns, "client")
    assert phase == "Succeeded", log.stdout + log.stderr
    assert json.loads(log.stdout)["version"]


# -- 4. the pull Job and the runtime share the cache claim --------------------------------------


def test_pull_job_and_runtime_share_the_cache_claim(
    cluster: Cluster, node: Node, model: dict[str, Any], server: client.V1Pod
) -> None:
    digest = model["status"]["digest"]
    # The pull Job's pod ran on the node and wrote to the cache claim the runtime mounts.
    pull_pods = cluster.job_pods(f"corral.dev/model={MODEL},app.kubernetes.io/component=pull")
    assert [p.status.phase for p in pull_pods] == ["Succeeded"]
    assert pull_pods[0].spec.node_name == server.spec.node_name == "corral-node"
    claims_of = [
        {v.persistent_volume_claim.claim_name for v in p.spec.volumes if v.persistent_volume_claim}
        for p in (pull_pods[0], server)
    ]
    assert CACHE_CLAIM in claims_of[0] and CACHE_CLAIM in claims_of[1]

    # The blob it wrote is the digest the Model reports, byte for byte.
    blob = volume_directory(cluster, CACHE_CLAIM) / "blobs" / ("sha256-" + digest.split(":")[1])
    sha = hashlib.sha256()
    with blob.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    assert f"sha256:{sha.hexdigest()}" == digest
    assert (cluster.get("modelservers", "srv") or {})["status"]["models"][0]["digest"] == digest

    # And it is that file the runtime serves from: after a generate, the model is mapped.
    generates(f"http://{server.status.pod_ip}:{PORT}", served_name(cluster, "srv"), "Water is", 6)
    pid = node.container_pid(server.status.container_statuses[0].container_id)
    mapped = "".join(Path(f"/proc/{p}/maps").read_text() for p in process_tree(pid))
    assert f"/models/blobs/{blob.name}" in mapped


# -- 5. SIGTERM in the middle of a stream -------------------------------------------------------


def _endpoint_ips(cluster: Cluster, service: str) -> set[str]:
    endpoints = cluster.core.read_namespaced_endpoints(service, cluster.ns)
    return {a.ip for s in endpoints.subsets or () for a in s.addresses or ()}


def test_sigterm_mid_stream_finishes_the_answer_after_leaving_the_endpoints(
    cluster: Cluster, server: client.V1Pod, kubeconfig: Path
) -> None:
    pod_ip, name = server.status.pod_ip, server.metadata.name
    wait_for(lambda: pod_ip in _endpoint_ips(cluster, "corral-srv"), 30, "the pod in Endpoints")
    log = subprocess.Popen(
        [
            str(TOOLS_BIN / "kubectl"),
            f"--kubeconfig={kubeconfig}",
            "logs",
            "-f",
            "-n",
            cluster.ns,
            name,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    model_name = served_name(cluster, "srv")
    prompt = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
    # A stream of about 15 seconds on this machine (its speed measured first): longer than the
    # preStop sleep, well within the runtime's drain (the grace period less the sleep).
    probe = http_json(
        f"http://{pod_ip}:{PORT}/api/generate",
        {
            "model": model_name,
            "prompt": prompt,
            "raw": True,
            "stream": False,
            "options": {"num_predict": 48, "temperature": 0},
        },
    )
    per_second = probe["eval_count"] / (probe["eval_duration"] / 1e9)
    tokens = max(96, min(3000, int(per_second * 15)))
    chunks: list[tuple[float, dict[str, Any]]] = []
    errors: list[BaseException] = []
    first = threading.Event()

    def stream() -> None:
        body = {
            "model": model_name,
            "prompt": prompt,
            "raw": True,
            "options": {"num_predict": tokens, "temperature": 0},
        }
        request = urllib.request.Request(
            f"http://{pod_ip}:{PORT}/api/generate",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                for line in response:
                    chunks.append((time.monotonic(), json.loads(line)))
                    first.set()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
        finally:
            first.set()

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert first.wait(60) and not errors, errors
    deleted = time.monotonic()
    cluster.core.delete_namespaced_pod(name, cluster.ns)  # the pod's own grace period
    wait_for(
        lambda: pod_ip not in _endpoint_ips(cluster, "corral-srv"),
        30,
        "the deleted pod to leave the Endpoints",
    )
    left_endpoints = time.monotonic()
    reader.join(90)
    assert not reader.is_alive() and not errors, errors
    ended, last = chunks[-1]
    assert last["done"] is True, (last, tokens)
    assert left_endpoints < ended, "the stream ended before the pod left the Endpoints"
    # The preStop sleep (5s) ran first, then the kubelet sent SIGTERM: the stream outlived it.
    assert ended - deleted > 6, f"the stream ended {ended - deleted:.1f}s after the delete ({last})"
    try:
        output, _ = log.communicate(timeout=60)
    finally:
        log.kill()
    assert "SIGTERM: draining" in output, output[-2000:]
    text = "".join(c["response"] for _, c in chunks)
    assert len(chunks) > 20 and text.strip()


# -- 6. a runtime killed for memory -------------------------------------------------------------


def test_oom_killed_runtime_shows_in_status_and_recovers(
    cluster: Cluster, model: dict[str, Any]
) -> None:
    create_server(cluster, "small", memory="40Mi")
    cond = wait_condition(cluster, "modelservers", "small", "Ready", "False", "OOMKilled", 180)
    assert "memory limit" in cond["message"]
    pods = cluster.job_pods("corral.dev/modelserver=small")
    killed = [
        s
        for p in pods
        for s in p.status.container_statuses or ()
        if "OOMKilled"
        in (
            (s.state.terminated.reason if s.state.terminated else None),
            (s.last_state.terminated.reason if s.last_state.terminated else None),
        )
    ]
    assert killed, "no container reports OOMKilled"

    cluster.patch("modelservers", "small", {"spec": {"resources": {"memory": "1Gi"}}})
    ready_pod(cluster, "small")
    wait_condition(cluster, "modelservers", "small", "Ready", "True", "Available", 120)


# -- 7. more GPUs than the node has ---------------------------------------------------------------


def test_gpu_pod_beyond_the_devices_is_pending_with_the_reason(
    cluster: Cluster, node: Node, model: dict[str, Any]
) -> None:
    allocatable = node.node()["status"]["allocatable"]["nvidia.com/gpu"]
    assert allocatable == "2"
    create_server(cluster, "big", resources={"gpus": 3})
    cond = wait_condition(cluster, "modelservers", "big", "Ready", "False", "Unschedulable", 60)
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    (pod,) = cluster.job_pods("corral.dev/modelserver=big")
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "3"


# -- 8. the kubelet's own API ---------------------------------------------------------------------


def _kubelet_status(path: str, token: str | None = None) -> int:
    """The HTTP status the node's kubelet API answers ``path`` with."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"https://{NODE_IP}:10250{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_the_kubelet_api_answers_only_whom_the_api_server_allows(
    cluster: Cluster, node: Node, kubectl: KubectlRunner
) -> None:
    # Anonymous (a pod or a process that reaches the node's address): refused.
    assert _kubelet_status("/pods") == 401
    assert _kubelet_status(f"/run/{cluster.ns}/x/c") == 401
    # A pod's ServiceAccount token: authenticated by the API server, not allowed nodes/proxy.
    token = kubectl("create", "token", "default", "-n", cluster.ns)
    if token.returncode != 0:  # kubectl newer than the API server's TokenRequest support
        secret = cluster.core.read_namespaced_service_account("default", cluster.ns).secrets[0]
        data = cluster.core.read_namespaced_secret(secret.name, cluster.ns).data["token"]
        jwt = base64.b64decode(data).decode()
    else:
        jwt = token.stdout.strip()
    assert _kubelet_status("/pods", jwt) == 403
    # The API server itself (its client certificate) still reaches it: kubectl logs works.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pause"},
        "spec": {
            "containers": [{"name": "pause", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}]
        },
    }
    cluster.core.create_namespaced_pod(cluster.ns, pod)

    def running() -> bool:
        status = cluster.core.read_namespaced_pod("pause", cluster.ns).status
        return status.phase == "Running"

    wait_for(running, 120, "the pause pod running")
    logs = kubectl("logs", "-n", cluster.ns, "pause")
    assert logs.returncode == 0, logs.stderr
