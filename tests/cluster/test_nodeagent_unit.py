"""Unit tests for the node agent's pure decisions (tests/support/nodeagent)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.support.nodeagent.decisions import (
    BoundPod,
    ProbeTracker,
    backoff_seconds,
    crashes_after_run,
    init_should_restart,
    plan_sync,
    should_restart,
)
from tests.support.nodeagent.imagemap import (
    ImageEntry,
    ImageMapError,
    container_argv,
    image_repository,
    parse_image_map,
)
from tests.support.nodeagent.nodeobj import NodeShape, node_status
from tests.support.nodeagent.podspec import (
    ConfigError,
    UnsupportedError,
    container_env,
    expand,
    mount_table,
    parse_quantity,
    plan_volumes,
    rewrite_path,
)
from tests.support.nodeagent.status import ContainerView, Terminated, pod_phase, pod_status

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# -- image map -------------------------------------------------------------------------------


def test_image_lookup_prefers_exact_then_repository_then_longest_prefix(tmp_path: Path) -> None:
    images = parse_image_map(
        {
            "images": {
                "reg/app:1": ["/bin/exact"],
                "reg/app": ["/bin/repo"],
                "reg/*": ["/bin/short"],
                "reg/tools/*": ["/bin/long"],
            }
        },
        tmp_path,
    )
    assert images.resolve("reg/app:1") == ImageEntry(entrypoint=("/bin/exact",))
    assert images.resolve("reg/app:2").entrypoint == ("/bin/repo",)  # type: ignore[union-attr]
    assert images.resolve("reg/app@sha256:ab").entrypoint == ("/bin/repo",)  # type: ignore[union-attr]
    assert images.resolve("reg/tools/x:3").entrypoint == ("/bin/long",)  # type: ignore[union-attr]
    assert images.resolve("reg/other").entrypoint == ("/bin/short",)  # type: ignore[union-attr]
    assert images.resolve("elsewhere/app:1") is None


def test_image_repository_keeps_registry_port() -> None:
    assert image_repository("host:5000/org/name:tag") == "host:5000/org/name"
    assert image_repository("host:5000/org/name") == "host:5000/org/name"
    assert image_repository("name@sha256:00") == "name"


def test_relative_entrypoint_resolves_against_the_map_directory(tmp_path: Path) -> None:
    images = parse_image_map({"images": {"a": {"entrypoint": [".venv/bin/x", "serve"]}}}, tmp_path)
    entry = images.resolve("a")
    assert entry is not None
    assert entry.entrypoint == (str(tmp_path / ".venv/bin/x"), "serve")


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"images": []},
        {"images": {"a": []}},
        {"images": {"a": {"entrypoint": "x"}}},
        {"images": {"a": {"entrypoint": ["x"], "env": {"K": 1}}}},
    ],
)
def test_malformed_image_maps_are_rejected(data: Any, tmp_path: Path) -> None:
    with pytest.raises(ImageMapError):
        parse_image_map(data, tmp_path)


def test_argv_follows_entrypoint_and_cmd_rules() -> None:
    entry = ImageEntry(entrypoint=("srv",), cmd=("--default",))
    assert container_argv(entry, None, None) == ["srv", "--default"]
    assert container_argv(entry, None, ["--x"]) == ["srv", "--x"]
    assert container_argv(entry, ["other"], None) == ["other"]
    assert container_argv(entry, ["other"], ["a"]) == ["other", "a"]


# -- pod spec --------------------------------------------------------------------------------


POD: dict[str, Any] = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "labels": {"app": "web"}},
    "spec": {"nodeName": "n1", "serviceAccountName": "default"},
}


def lookup(kind: str, namespace: str, name: str) -> dict[str, str] | None:
    store = {("Secret", "ns", "s"): {"token": "hunter2"}, ("ConfigMap", "ns", "c"): {"a": "1"}}
    return store.get((kind, namespace, name))


def test_env_resolves_refs_and_expands_in_order() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"}],
        "env": [
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
            {"name": "URL", "value": "http://$(IP):1/$(MISSING)/$$(IP)"},
            {
                "name": "MEM",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
        ],
        "resources": {"limits": {"memory": "2Gi"}},
    }
    env = container_env(POD, container, lookup, "10.244.0.6", "10.244.0.1", {})
    assert env == {
        "CM_a": "1",
        "IP": "10.244.0.6",
        "APP": "web",
        "TOKEN": "hunter2",
        "URL": "http://10.244.0.6:1/$(MISSING)/$(IP)",
        "MEM": "2048",
    }


def test_missing_reference_is_a_config_error_unless_optional() -> None:
    ref = {"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}
    with pytest.raises(ConfigError, match="nope"):
        container_env(POD, {"env": [ref]}, lookup, "", "", {})
    ref["valueFrom"]["secretKeyRef"]["optional"] = True  # type: ignore[index]
    assert container_env(POD, {"env": [ref]}, lookup, "", "", {}) == {}


def test_expand_leaves_unknown_names_and_unescapes_double_dollar() -> None:
    assert expand("$(A)-$(B)-$$(A)", {"A": "x"}) == "x-$(B)-$(A)"


def test_quantities() -> None:
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("2Gi") == 2 * 2**30
    assert parse_quantity("1e3") == 1000
    with pytest.raises(ValueError):
        parse_quantity("lots")


def test_paths_under_mounts_are_rewritten(tmp_path: Path) -> None:
    mounts = mount_table(
        {
            "volumeMounts": [
                {"name": "cache", "mountPath": "/models"},
                {"name": "cache", "mountPath": "/models/sub", "subPath": "s"},
            ]
        },
        {"cache": tmp_path},
    )
    assert rewrite_path("/models", mounts) == str(tmp_path)
    assert rewrite_path("/models/blobs/a", mounts) == str(tmp_path / "blobs/a")
    assert rewrite_path("/models/sub/x", mounts) == str(tmp_path / "s/x")
    assert rewrite_path("--dir=/models/m", mounts) == f"--dir={tmp_path / 'm'}"
    assert rewrite_path("/modelsx", mounts) == "/modelsx"
    assert rewrite_path("serve", mounts) == "serve"


def test_volumes_map_to_local_directories(tmp_path: Path) -> None:
    pod = {
        "metadata": {"namespace": "ns"},
        "spec": {
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "cache", "persistentVolumeClaim": {"claimName": "cache"}},
                {"name": "host", "hostPath": {"path": "/srv/x"}},
                {
                    "name": "token",
                    "secret": {"secretName": "s", "items": [{"key": "token", "path": "t/k"}]},
                },
            ]
        },
    }
    plans = plan_volumes(pod, tmp_path, lookup, lambda ns, claim: Path(f"/pv/{ns}/{claim}"))
    by_name = {p.name: p for p in plans}
    assert by_name["scratch"].path == tmp_path / "volumes" / "scratch"
    assert by_name["cache"].path == Path("/pv/ns/cache") and not by_name["cache"].owned
    assert by_name["host"].path == Path("/srv/x")
    assert by_name["token"].files == {"t/k": b"hunter2"}


def test_unbound_claims_wait_and_unknown_volume_types_are_refused(tmp_path: Path) -> None:
    claim = {
        "metadata": {},
        "spec": {"volumes": [{"name": "c", "persistentVolumeClaim": {"claimName": "x"}}]},
    }
    with pytest.raises(ConfigError, match="not bound"):
        plan_volumes(claim, tmp_path, lookup, lambda ns, c: None)
    nfs = {"metadata": {}, "spec": {"volumes": [{"name": "n", "nfs": {"server": "s"}}]}}
    with pytest.raises(UnsupportedError, match="nfs"):
        plan_volumes(nfs, tmp_path, lookup, lambda ns, c: None)


# -- status ----------------------------------------------------------------------------------


def done(code: int) -> Terminated:
    return Terminated(code, "Completed" if code == 0 else "Error", "", T0, T0)


RUNNING = ContainerView("c", "i", running_since=T0)
WAITING = ContainerView("c", "i")
OK = ContainerView("c", "i", terminated=done(0))
BAD = ContainerView("c", "i", terminated=done(1))
BACKOFF = ContainerView("c", "i", waiting_reason="CrashLoopBackOff", last_terminated=done(1))


@pytest.mark.parametrize(
    ("policy", "inits", "containers", "phase"),
    [
        ("Always", [], [WAITING], "Pending"),
        ("Always", [], [RUNNING, OK], "Running"),
        ("Always", [], [BACKOFF], "Running"),
        ("Always", [], [OK], "Running"),
        ("OnFailure", [], [OK, OK], "Succeeded"),
        ("OnFailure", [], [BACKOFF], "Running"),
        ("Never", [], [OK, BAD], "Failed"),
        ("Never", [], [OK], "Succeeded"),
        ("Never", [RUNNING], [WAITING], "Pending"),
        ("Never", [BAD], [WAITING], "Failed"),
        ("Always", [BACKOFF], [WAITING], "Pending"),
        ("Always", [OK], [RUNNING], "Running"),
    ],
)
def test_phase(
    policy: str, inits: list[ContainerView], containers: list[ContainerView], phase: str
) -> None:
    assert pod_phase(policy, inits, containers) == phase


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_ready_needs_every_container_ready_and_keeps_transition_times() -> None:
    pod: dict[str, Any] = {"spec": {"restartPolicy": "Always"}}
    ready = ContainerView("a", "i", running_since=T0, ready=True, started=True)
    unready = ContainerView("b", "i", running_since=T0)
    first = pod_status(pod, [], [ready, unready], "10.0.0.2", "10.0.0.1", T0, now=T0)
    assert conditions(first) == {
        "Initialized": "True",
        "Ready": "False",
        "ContainersReady": "False",
        "PodScheduled": "True",
    }
    assert first["podIPs"] == [{"ip": "10.0.0.2"}] and first["phase"] == "Running"
    later = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    both = pod_status(pod, [], [ready, ready], "10.0.0.2", "10.0.0.1", T0, first, now=later)
    assert conditions(both)["Ready"] == "True"
    times = {c["type"]: c["lastTransitionTime"] for c in both["conditions"]}
    assert times["Ready"] == "2026-01-01T00:05:00Z"
    assert times["Initialized"] == "2026-01-01T00:00:00Z"


def test_readiness_gates_hold_ready_and_foreign_conditions_survive() -> None:
    pod: dict[str, Any] = {"spec": {"readinessGates": [{"conditionType": "x/ok"}]}}
    ready = ContainerView("a", "i", running_since=T0, ready=True, started=True)
    gate_false = {"conditions": [{"type": "x/ok", "status": "False"}]}
    status = pod_status(pod, [], [ready], "ip", "host", T0, gate_false, now=T0)
    assert conditions(status)["Ready"] == "False"
    assert conditions(status)["x/ok"] == "False"
    gate_true = {"conditions": [{"type": "x/ok", "status": "True"}]}
    assert conditions(pod_status(pod, [], [ready], "ip", "host", T0, gate_true))["Ready"] == "True"


def test_container_status_shape() -> None:
    view = ContainerView(
        "c",
        "img",
        waiting_reason="CrashLoopBackOff",
        waiting_message="m",
        last_terminated=done(3),
        restart_count=2,
    )
    out = view.as_dict()
    assert out["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "m"}}
    assert out["lastState"]["terminated"]["exitCode"] == 3
    assert out["restartCount"] == 2 and out["ready"] is False


# -- decisions -------------------------------------------------------------------------------


def test_restart_policy() -> None:
    assert should_restart("Always", 0) and should_restart("Always", 1)
    assert should_restart("OnFailure", 1) and not should_restart("OnFailure", 0)
    assert not should_restart("Never", 1)
    assert init_should_restart("Always", 1) and not init_should_restart("Always", 0)
    assert not init_should_restart("Never", 1)


def test_backoff_doubles_up_to_the_cap_and_resets_after_a_long_run() -> None:
    assert [backoff_seconds(n, 10) for n in range(6)] == [0, 10, 20, 40, 80, 160]
    assert backoff_seconds(10, 10) == 300
    assert crashes_after_run(4, 5, 10) == 5
    assert crashes_after_run(4, 601, 10) == 1


def test_probe_thresholds_and_timing() -> None:
    tracker = ProbeTracker.from_spec(
        {
            "initialDelaySeconds": 5,
            "periodSeconds": 2,
            "successThreshold": 2,
            "failureThreshold": 2,
        },
        started=100.0,
        healthy=False,
    )
    assert not tracker.due(104.9) and tracker.due(105)
    tracker.record(True, 105)
    assert not tracker.healthy and not tracker.due(106) and tracker.due(107)
    tracker.record(True, 107)
    assert tracker.healthy
    tracker.record(False, 109)
    assert tracker.healthy  # one failure is below the threshold
    tracker.record(False, 111)
    assert not tracker.healthy


def test_sync_plan() -> None:
    bound = [
        BoundPod("new", terminating=False, finished=False),
        BoundPod("running", terminating=False, finished=False),
        BoundPod("deleting", terminating=True, finished=False),
        BoundPod("deleted-stopped", terminating=True, finished=False),
        BoundPod("orphan-terminating", terminating=True, finished=False),
        BoundPod("completed", terminating=False, finished=True),
    ]
    workers = {"running": False, "deleting": False, "deleted-stopped": True, "gone": False}
    plan = plan_sync(bound, workers)
    assert plan.start == ["new"]
    assert plan.stop == ["deleting"]
    assert plan.finalize == ["deleted-stopped", "orphan-terminating"]
    assert plan.forget == ["gone"]


def test_node_capacity_carries_gpus_only_when_asked() -> None:
    shape = NodeShape(name="n", address="10.244.0.1", pod_cidr="10.244.0.0/24", gpus=2)
    status = node_status(shape, T0, T0)
    assert status["capacity"]["nvidia.com/gpu"] == "2"
    assert status["allocatable"] == status["capacity"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    plain = NodeShape(name="n", address="a", pod_cidr="c")
    assert "nvidia.com/gpu" not in node_status(plain, T0, T0)["capacity"]
