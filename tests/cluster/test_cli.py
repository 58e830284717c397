"""``corral deploy|ps|models|run`` against the real control plane.

``deploy`` is checked with the operator running (it must take the objects over and report
them); ``ps`` and ``run`` read what the operator and the chart would have created — a runtime
Service's Endpoints, the gateway Service — here created by the test and pointing at a real
``corral serve`` on this machine's non-loopback address (the API server refuses loopback
Endpoints). The runtime speaks the same Ollama API as the gateway, which is what ``corral run``
relies on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral_operator import api
from corral_runtime.store.layout import ModelStore
from devstack.controlplane import free_port
from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, wait_for
from tests.conftest import TOOLS_BIN

pytestmark = pytest.mark.cluster

GREEDY = ["-o", "temperature=0", "-o", "num_predict=8", "-o", "seed=7"]


def corral(kubeconfig: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOST", "OLLAMA_HOST")}
    return subprocess.run(
        [sys.executable, "-m", "corral_runtime.cli", *args, "--kubeconfig", str(kubeconfig)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def host_address() -> str:
    """This machine's first non-loopback IPv4 address."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        return line.split()[3].split("/")[0]
    pytest.fail("this machine has no non-loopback IPv4 address for Endpoints to point at")


@pytest.fixture
def operator(
    kubeconfig: Path, namespace: str, tmp_path: Path, cluster: Cluster
) -> Iterator[Operator]:
    op = Operator(kubeconfig, namespace, tmp_path)
    op.start()
    try:
        yield op
    finally:
        # The operator must release its finalizers before the namespace goes away.
        def models() -> list[dict[str, Any]]:
            listed: Any = cluster.custom.list_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.MODELS
            )
            return list(listed["items"])

        for model in models():
            cluster.delete(api.MODELS, model["metadata"]["name"])

        def gone() -> bool:
            cluster.finish_gc_pods()
            return not models()

        try:
            wait_for(gone, 30, "Models deleted")
        finally:
            op.stop()


@pytest.fixture(scope="module")
def runtime(model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``corral serve`` on this machine's address; yields ``ip:port``."""
    address, port = host_address(), free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "corral_runtime.cli", "serve",
                "--host", address, "--port", str(port), "--models", str(model_store.root),
                "--context-length", "2048", "--threads", "2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def up() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            with urllib.request.urlopen(f"http://{address}:{port}/api/version", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        wait_for(up, 60, "corral serve")
        yield f"{address}:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def service_with_endpoints(
    cluster: Cluster, name: str, address: str, labels: dict[str, str] | None = None
) -> None:
    """A selector-less Service whose Endpoints name ``address`` (``ip:port``) as ready."""
    ip, port = address.rsplit(":", 1)
    service: Any = {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"ports": [{"name": "http", "port": 11434, "targetPort": int(port)}]},
    }
    endpoints: Any = {
        "metadata": {"name": name, "labels": labels or {}},
        "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "http", "port": int(port)}]}],
    }
    cluster.core.create_namespaced_service(cluster.ns, service)
    cluster.core.create_namespaced_endpoints(cluster.ns, endpoints)


# -- deploy and models, with the operator ------------------------------------------------------


def test_deploy_converges_and_the_operator_takes_over(
    kubeconfig: Path, namespace: str, cluster: Cluster, operator: Operator
) -> None:
    first = corral(kubeconfig, "deploy", "gemma3:270m", "-n", namespace)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "model.corral.dev/gemma3-270m created (source ollama://gemma3:270m)",
        "modelserver.corral.dev/gemma3-270m created "
        "(replicas 0-1, keep-alive 5m, gpus sized from the model)",
        "Chat with it: corral run gemma3:270m",
    ]
    again = corral(kubeconfig, "deploy", "gemma3:270m", "-n", namespace)
    assert again.returncode == 0, again.stderr
    assert "model.corral.dev/gemma3-270m unchanged" in again.stdout
    assert "modelserver.corral.dev/gemma3-270m unchanged" in again.stdout

    changed = corral(
        kubeconfig, "deploy", "ollama://gemma3:270m", "-n", namespace,
        "--max", "3", "--keep-alive", "10m", "--max-keep-alive", "-1",
        "--cpu", "500m", "--memory", "1Gi",
    )  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert "model.corral.dev/gemma3-270m unchanged" in changed.stdout
    assert (
        "modelserver.corral.dev/gemma3-270m configured "
        "(replicas 0-3, keep-alive 10m, gpus sized from the model)" in changed.stdout
    )
    server = cluster.get(api.MODELSERVERS, "gemma3-270m")
    assert server is not None
    assert server["spec"]["maxReplicas"] == 3
    assert server["spec"]["keepAliveSeconds"] == 600
    assert server["spec"]["maxKeepAliveSeconds"] == -1
    resources = server["spec"]["resources"]
    # No --gpus: the CLI leaves them to the operator's sizing (no gpus field of its own).
    assert "gpus" not in resources and (resources["cpu"], resources["memory"]) == ("500m", "1Gi")
    managers = {f["manager"] for f in server["metadata"]["managedFields"]}
    assert "corral-cli" in managers

    # The operator pulls the Model; `corral models` reports what the pull found.
    cluster.play_pull("gemma3-270m")
    cluster.wait_condition(api.MODELS, "gemma3-270m", "Ready", "True")
    models = corral(kubeconfig, "models", "-n", namespace)
    assert models.returncode == 0, models.stderr
    assert [line.split() for line in models.stdout.splitlines()] == [
        ["NAME", "SOURCE", "READY", "SIZE", "PARAMETERS", "QUANTIZATION"],
        ["gemma3-270m", "ollama://gemma3:270m", "True", "253", "MB", "268.10M", "Q4_K_M"],
    ]

    # With the Model ready and no request yet, the server sits at zero replicas.
    cluster.wait_condition(api.MODELSERVERS, "gemma3-270m", "Ready", "True", "ScaledToZero")
    ps = corral(kubeconfig, "ps", "-n", namespace)
    assert ps.returncode == 0, ps.stderr
    assert [line.split() for line in ps.stdout.splitlines()][1:] == [
        ["gemma3-270m", "gemma3-270m", "0/0", "-", "10m", "ScaledToZero", "-"]
    ]


def test_the_namespace_comes_from_the_kubeconfig_context(
    kubeconfig: Path, namespace: str, cluster: Cluster, tmp_path: Path
) -> None:
    scoped = tmp_path / "kubeconfig"
    scoped.write_text(kubeconfig.read_text())
    subprocess.run(
        [str(TOOLS_BIN / "kubectl"), f"--kubeconfig={scoped}", "config", "set-context",
         "--current", f"--namespace={namespace}"],
        check=True, capture_output=True,
    )  # fmt: skip
    deployed = corral(scoped, "deploy", "qwen2.5:0.5b")
    assert deployed.returncode == 0, deployed.stderr
    assert "model.corral.dev/qwen2.5-0.5b created" in deployed.stdout
    assert cluster.get(api.MODELS, "qwen2.5-0.5b") is not None
    assert cluster.get(api.MODELSERVERS, "qwen2.5-0.5b") is not None


# -- ps, with the operator's children played by the test ---------------------------------------


def test_ps_shows_idle_time_and_what_ready_pods_have_loaded(
    kubeconfig: Path, namespace: str, cluster: Cluster, runtime: str
) -> None:
    assert (
        corral(kubeconfig, "deploy", "gemma3:270m", "--min", "1", "-n", namespace).returncode == 0
    )
    # What the operator and gateway would have written: a ready replica, a request 90 s ago.
    last = (datetime.now(UTC) - timedelta(seconds=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.custom.patch_namespaced_custom_object_status(
        api.GROUP, api.VERSION, namespace, api.MODELSERVERS, "gemma3-270m",
        {"status": {
            "replicas": 1, "readyReplicas": 1, "lastRequestTime": last,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Available",
                            "message": "1/1 replicas ready", "lastTransitionTime": last}],
        }},
    )  # fmt: skip
    service_with_endpoints(cluster, api.server_child_name("gemma3-270m"), runtime)
    # Load the model in the pod, as a first request would.
    reply = httpx.post(
        f"http://{runtime}/api/generate",
        json={"model": "gemma3:270m", "prompt": "Hi", "options": {"num_predict": 1}},
        timeout=60,
        trust_env=False,
    )
    assert reply.status_code == 200

    ps = corral(kubeconfig, "ps", "-n", namespace)
    assert ps.returncode == 0, ps.stderr
    header, row = (line.split() for line in ps.stdout.splitlines())
    assert header == ["NAME", "MODELS", "READY", "IDLE", "KEEP-ALIVE", "STATE", "LOADED"]
    assert row[:3] == ["gemma3-270m", "gemma3-270m", "1/1"]
    assert row[3].startswith("1m") and row[3].endswith("s")
    assert row[4:] == ["5m", "Available", "gemma3:270m"]


# -- run: finding the gateway ------------------------------------------------------------------

GATEWAY_LABELS = {
    "app.kubernetes.io/name": "corral",
    "app.kubernetes.io/part-of": "corral",
    "app.kubernetes.io/component": "gateway",
}


def test_run_reaches_the_gateway_through_its_endpoints(
    kubeconfig: Path, namespace: str, cluster: Cluster, runtime: str
) -> None:
    # The Service's ClusterIP does not answer here (no kube-proxy); its ready pod does.
    service_with_endpoints(cluster, "corral-gateway", runtime, GATEWAY_LABELS)
    result = corral(
        kubeconfig, "run", "gemma3:270m", "Why", "is", "the", "sky", "blue?",
        "--gateway-namespace", namespace, *GREEDY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    direct = httpx.post(
        f"http://{runtime}/api/chat",
        json={
            "model": "gemma3:270m",
            "messages": [{"role": "user", "content": "Why is the sky blue?"}],
            "options": {"temperature": 0, "num_predict": 8, "seed": 7},
            "stream": False,
        },
        timeout=60,
        trust_env=False,
    ).json()
    assert direct["message"]["content"].strip()
    assert result.stdout == direct["message"]["content"] + "\n"


def test_run_without_a_gateway_says_what_to_do(
    kubeconfig: Path, namespace: str, cluster: Cluster
) -> None:
    missing = corral(kubeconfig, "run", "gemma3:270m", "hi", "--gateway-namespace", namespace)
    assert missing.returncode == 1
    assert missing.stderr == (
        f"Error: no corral gateway Service in namespace {namespace!r} "
        "(install the chart there, pass --gateway-namespace, or pass --host)\n"
    )

    # A gateway Service whose ClusterIP is not routed here and which has no ready pod.
    service: Any = {
        "metadata": {"name": "corral-gateway", "labels": GATEWAY_LABELS},
        "spec": {"ports": [{"name": "http", "port": 11434}]},
    }
    cluster.core.create_namespaced_service(namespace, service)
    started = time.monotonic()
    unreachable = corral(kubeconfig, "run", "gemma3:270m", "hi", "--gateway-namespace", namespace)
    assert unreachable.returncode == 1
    assert time.monotonic() - started < 30
    err = unreachable.stderr
    assert err.startswith(f"Error: the gateway {namespace}/corral-gateway is not reachable")
    assert f"kubectl -n {namespace} port-forward svc/corral-gateway 11434:11434" in err
    assert "--host http://127.0.0.1:11434" in err
    assert err.count("\n") == 1


def test_an_unreachable_cluster_is_one_line(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "kubeconfig"
    config.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: gone
  cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}
users:
- name: u
  user: {{token: t}}
contexts:
- name: gone
  context: {{cluster: gone, user: u}}
current-context: gone
"""
    )
    for command in (["ps"], ["models"], ["deploy", "gemma3:270m"], ["run", "gemma3:270m", "x"]):
        result = corral(config, *command)
        assert result.returncode == 1, command
        assert result.stderr == (
            f"Error: cannot reach the Kubernetes API at https://127.0.0.1:{port}: "
            "[Errno 111] Connection refused\n"
        ), command
