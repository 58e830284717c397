"""``kubectl logs`` on pods the node agent runs: its kubelet log endpoint (``nodeagent.kubelet``),
reached by the API server's ``pods/log`` through the Node's address and kubelet port."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.cluster.test_nodeagent import (
    RunningAgent,
    create_pod,
    get_pod,
    pod_manifest,
    start_agent,
    stop_agent,
    wait_for,
)
from tests.conftest import TOOLS_BIN, KubectlRunner
from tests.support.nodeagent.kube import raw
from tests.support.nodeagent.kubelet import (
    LogRequest,
    LogRequestError,
    container_runs,
    parse_log_request,
    select_log,
    until_next_run,
)
from tests.support.nodeagent.worker import _banner


def _banner_line(text: str = "start ['sh'] in corral-x") -> bytes:
    out = io.BytesIO()
    _banner(out, text)
    return out.getvalue()


# -- the pure part ------------------------------------------------------------------------------


@pytest.mark.unit
def test_parses_the_api_servers_request() -> None:
    request = parse_log_request(
        "/containerLogs/ns-1/web-0/main?tailLines=5&limitBytes=100&previous=true&timestamps=true"
    )
    assert request == LogRequest("ns-1", "web-0", "main", 5, 100, previous=True)
    assert parse_log_request("/containerLogs/ns/pod/c?follow=true") == LogRequest(
        "ns", "pod", "c", follow=True
    )
    for other in ("/pods", "/containerLogs/ns/pod", "/containerLogs/ns//c", "/exec/ns/p/c"):
        assert parse_log_request(other) is None
    for bad in ("tailLines=-1", "limitBytes=0", "tailLines=x"):
        with pytest.raises(LogRequestError):
            parse_log_request(f"/containerLogs/ns/pod/c?{bad}")


@pytest.mark.unit
def test_runs_are_split_at_the_workers_banners() -> None:
    data = _banner_line() + b"one\ntwo\n" + _banner_line() + b"three\n" + _banner_line()
    assert container_runs(data) == [b"one\ntwo\n", b"three\n", b""]
    assert container_runs(b"") == []


@pytest.mark.unit
def test_selects_the_current_or_previous_run_then_tail_then_limit() -> None:
    data = _banner_line() + b"a\nb\nc\n" + _banner_line() + b"d\ne\nf\ng"

    def select(**options: Any) -> bytes | None:
        return select_log(data, LogRequest("ns", "p", "c", **options))

    assert select() == b"d\ne\nf\ng"
    assert select(tail_lines=2) == b"f\ng"
    assert select(tail_lines=0) == b""
    assert select(tail_lines=3, limit_bytes=3) == b"e\nf"
    assert select(previous=True) == b"a\nb\nc\n"
    assert select_log(_banner_line() + b"x\n", LogRequest("n", "p", "c", previous=True)) is None
    assert select_log(b"", LogRequest("n", "p", "c")) == b""


@pytest.mark.unit
def test_following_stops_at_the_next_run() -> None:
    assert until_next_run(b"more\n") == (b"more\n", False)
    assert until_next_run(b"last\n" + _banner_line() + b"next\n") == (b"last\n", True)


# -- kubectl logs against the control plane -----------------------------------------------------


@pytest.fixture
def agent(kubeconfig: Path, tmp_path: Path) -> Iterator[RunningAgent]:
    running = start_agent(kubeconfig, tmp_path)
    try:
        yield running
    finally:
        stop_agent(running)


@pytest.mark.cluster
def test_kubectl_logs_reads_the_container_output(
    agent: RunningAgent, namespace: str, k8s_client: Any, kubectl: KubectlRunner, kubeconfig: Path
) -> None:
    core = client.CoreV1Api(k8s_client)
    node = raw(core.read_node, agent.node)["status"]
    assert node["daemonEndpoints"]["kubeletEndpoint"]["Port"] > 0
    # The first run prints five lines and fails; the second prints five, waits for a go, prints
    # one more and succeeds. The second run's output is the log, the first run's the previous.
    script = (
        'n=$(cat "$M/runs" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$M/runs"; '
        'for i in 1 2 3 4 5; do echo "run $n line $i"; done; '
        "[ $n -lt 2 ] && exit 1; "
        'while [ ! -f "$M/go" ]; do sleep 0.2; done; echo "after go"'
    )
    create_pod(
        core,
        namespace,
        pod_manifest(
            "talker",
            agent,
            {
                "image": "corral-test/sh:1",
                "args": [script],
                "env": [{"name": "M", "value": "/marks"}],
                "volumeMounts": [{"name": "marks", "mountPath": "/marks"}],
            },
            volumes=[{"name": "marks", "hostPath": {"path": str(agent.marks)}}],
            restartPolicy="OnFailure",
        ),
    )

    def logs(*args: str) -> str:
        done = kubectl("logs", "-n", namespace, "talker", *args, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def second_run_printed() -> str | None:
        statuses = get_pod(core, namespace, "talker")["status"].get("containerStatuses") or []
        if not statuses or statuses[0]["restartCount"] < 1:
            return None
        text = logs()
        return text if text.count("\n") == 5 else None

    current = wait_for("the second run's output", second_run_printed)
    assert current.splitlines() == [f"run 2 line {i}" for i in range(1, 6)]
    assert logs("--tail=2").splitlines() == ["run 2 line 4", "run 2 line 5"]
    assert logs("--tail=2", "--limit-bytes=5") == "run 2"
    assert logs("--previous").splitlines() == [f"run 1 line {i}" for i in range(1, 6)]
    missing = kubectl("logs", "-n", namespace, "talker", "-c", "nope", timeout=30)
    assert missing.returncode != 0 and "nope" in missing.stderr

    # -f streams what the running container appends and ends when it stops.
    argv = [str(TOOLS_BIN / "kubectl"), f"--kubeconfig={kubeconfig}", "logs", "-n", namespace]
    follow = subprocess.Popen(
        [*argv, "talker", "-f", "--tail=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "run 2 line 5\n"
        (agent.marks / "go").write_text("")
        rest, errors = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, errors
    assert rest == "after go\n"
    assert logs().splitlines()[-1] == "after go"
