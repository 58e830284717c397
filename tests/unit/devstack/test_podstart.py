"""devstack.podstart: a pod's start read from the node's logs (excerpts of a real node's, the
kubelet at -v=4 and containerd at debug level, while bench/coldstart_cluster.py woke a server)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from devstack.podstart import PHASES, containerd_time, klog_time, pod_start_phases

pytestmark = pytest.mark.unit

HERE = Path(__file__).parent
POD, UID = "corral-gemma3-270m-7c68b9f6b-w5cjw", "95ea1e89-3573-4e44-80ce-7a752ef0af7c"


def _utc(text: str) -> float:
    return datetime.datetime.fromisoformat(text + "+00:00").timestamp()


def _phases() -> dict[str, float]:
    return pod_start_phases(
        (HERE / "podstart.kubelet.log").read_text(),
        (HERE / "podstart.containerd.log").read_text(),
        POD,
        UID,
        "runtime",
        2026,
    )


def test_klog_time_is_local_time_with_the_year_given() -> None:
    line = 'I1207 01:27:20.139699   21803 kubelet.go:1888] SyncLoop (ADD, "api"): "p"'
    expected = datetime.datetime(2026, 12, 7, 1, 27, 20, 139699).astimezone().timestamp()
    assert klog_time(line, 2026) == expected
    assert klog_time("not a klog line", 2026) is None


def test_containerd_time_keeps_microseconds_of_utc() -> None:
    line = 'time="2026-12-07T01:27:20.442387815Z" level=info msg="RunPodSandbox for"'
    assert containerd_time(line) == _utc("2026-12-07T01:27:20.442387")
    assert containerd_time("level=info") is None


def test_every_phase_of_the_pods_start_in_order() -> None:
    phases = _phases()
    assert list(phases) != [] and set(phases) == set(PHASES)
    # The node took them in PHASES' order (the CNI setup inside the sandbox's creation).
    in_order = [phases[name] for name in PHASES if not name.startswith("cni_")]
    assert in_order == sorted(in_order)
    assert phases["sandbox_start"] < phases["cni_start"] < phases["cni_done"]
    assert phases["cni_done"] < phases["sandbox_done"]


def test_phases_are_the_pods_own_lines() -> None:
    phases = _phases()
    # Another pod's sandbox (started 25 s before) and its kubelet ADD are not this pod's.
    assert phases["sandbox_start"] == _utc("2026-12-07T01:27:20.442387")
    assert phases["sandbox_done"] == _utc("2026-12-07T01:27:20.569876")
    assert phases["kubelet_add"] == klog_time("I1207 01:27:20.139699 ", 2026)
    # The last of the two volumes; the first time the pod worker saw them all (its first wait).
    assert phases["volumes_mounted"] == klog_time("I1207 01:27:20.352227 ", 2026)
    assert phases["volumes_seen"] == klog_time("I1207 01:27:20.441617 ", 2026)
    # The container's start, by the id its creation returned (not the call's start).
    assert phases["container_created"] == _utc("2026-12-07T01:27:20.592089")
    assert phases["container_started"] == _utc("2026-12-07T01:27:20.665351")


def test_missing_lines_leave_their_phases_out() -> None:
    containerd = (HERE / "podstart.containerd.log").read_text()
    phases = pod_start_phases("", containerd, POD, UID, "runtime", 2026)
    assert "kubelet_add" not in phases and "volumes_seen" not in phases
    assert "container_started" in phases
    assert pod_start_phases("", containerd, POD, UID, "other", 2026).keys() == {
        "sandbox_start",
        "cni_start",
        "cni_done",
        "sandbox_done",
    }
    assert pod_start_phases("", "", POD, UID, "runtime", 2026) == {}
