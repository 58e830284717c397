"""The e2e scenario on any cluster that runs pods: apply the gemma3:270m sample, wait for it to
be Ready, chat through the gateway with the official ``ollama`` client, see it in ``corral ps``.

Opt-in: set ``CORRAL_E2E_KUBECONFIG`` (``scripts/e2e-kind.sh`` / ``make e2e-kind`` does, for a
kind cluster with corral's images and chart). The cluster needs Internet access: the Model pulls
``gemma3:270m`` from the Ollama registry. The gateway is reached at ``CORRAL_E2E_GATEWAY_URL``
when set, else through ``kubectl port-forward`` to its Service in ``CORRAL_E2E_GATEWAY_NAMESPACE``
(default corral-system). ``CORRAL_E2E_TIMEOUT`` bounds each wait (seconds, default 900).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import ollama
import pytest

from devstack import poll

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "manifests" / "samples" / "gemma3-270m.yaml"
KUBECONFIG = os.environ.get("CORRAL_E2E_KUBECONFIG", "")
GATEWAY_NAMESPACE = os.environ.get("CORRAL_E2E_GATEWAY_NAMESPACE", "corral-system")
TIMEOUT = float(os.environ.get("CORRAL_E2E_TIMEOUT", "900"))
T = TypeVar("T")

pytestmark = [
    pytest.mark.e2e_kind,
    pytest.mark.skipif(not KUBECONFIG, reason="CORRAL_E2E_KUBECONFIG is not set (opt-in tier)"),
    pytest.mark.timeout(3 * TIMEOUT + 120),
]


def kubectl_binary() -> str:
    local = ROOT / ".tools" / "bin" / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl is needed: run `make install` or put kubectl on PATH")
    return found


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [kubectl_binary(), f"--kubeconfig={KUBECONFIG}", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
    )


def wait_for(check: Callable[[], T | None], what: str, timeout: float = TIMEOUT) -> T:
    return poll.wait_for(what, check, timeout, interval=2)


def ready(kind: str, name: str, namespace: str) -> str | None:
    result = kubectl(
        "get", kind, name, "-n", namespace, "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        check=False,
    )  # fmt: skip
    return "ready" if result.stdout.strip() == "True" else None


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gateway_url() -> Iterator[str]:
    given = os.environ.get("CORRAL_E2E_GATEWAY_URL")
    if given:
        yield given.rstrip("/")
        return
    service = kubectl(
        "get", "service", "-n", GATEWAY_NAMESPACE, "-o", "jsonpath={.items[0].metadata.name}",
        "-l", "app.kubernetes.io/part-of=corral,app.kubernetes.io/component=gateway",
    ).stdout.strip()  # fmt: skip
    assert service, f"no corral gateway Service in {GATEWAY_NAMESPACE}"
    port = free_port()
    forward = subprocess.Popen(
        [kubectl_binary(), f"--kubeconfig={KUBECONFIG}", "-n", GATEWAY_NAMESPACE,
         "port-forward", f"svc/{service}", f"{port}:11434"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert forward.poll() is None, "kubectl port-forward exited"
        try:
            return httpx.get(f"{url}/api/version", timeout=2, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, "the gateway through kubectl port-forward", 60)
        yield url
    finally:
        forward.terminate()
        forward.wait(10)


def test_sample_pulls_wakes_and_chats_through_the_gateway(namespace: str, gateway_url: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(SAMPLE))
    wait_for(lambda: ready("model", "gemma3-270m", namespace), "Model gemma3-270m Ready")
    wait_for(lambda: ready("modelserver", "gemma3-270m", namespace), "ModelServer Ready")

    # The server starts at zero replicas: the gateway scales it up and holds the request.
    with ollama.Client(host=gateway_url, timeout=TIMEOUT) as client:
        reply = client.chat(
            model="gemma3:270m",
            messages=[{"role": "user", "content": "Why is the sky blue?"}],
            options={"temperature": 0, "num_predict": 16},
        )
        assert reply.message.content and reply.message.content.strip()
        streamed = list(
            client.chat(
                model="gemma3:270m",
                messages=[{"role": "user", "content": "Name three colors."}],
                options={"num_predict": 16},
                stream=True,
            )
        )
        assert len(streamed) >= 2 and streamed[-1].done
        listed: Any = client.list()
        assert "gemma3:270m" in [m.model for m in listed.models]

    def server_row() -> list[str] | None:
        ps = subprocess.run(
            [sys.executable, "-m", "corral_runtime.cli", "ps", "-n", namespace,
             "--kubeconfig", KUBECONFIG],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert ps.returncode == 0, ps.stderr
        row = ps.stdout.splitlines()[1].split()
        return row if row[2] == "1/1" else None

    # The operator reports the ready replica shortly after the pod that answered became ready.
    row = wait_for(server_row, "corral ps to show 1/1 ready", 120)
    assert row[0] == "gemma3-270m" and row[5] == "Available"
