"""The restricted-profile checker: a compliant pod passes; each breach is found, by field."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.pod_security import pod_templates, restricted_violations

pytestmark = pytest.mark.unit


def compliant_pod() -> dict[str, Any]:
    return {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [
            {"name": "init", "securityContext": _container_context()},
        ],
        "containers": [
            {
                "name": "app",
                "ports": [{"containerPort": 8080}],
                "securityContext": _container_context(),
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "c"}},
            {"name": "conf", "configMap": {"name": "c"}},
        ],
    }


def _container_context() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_compliant_pod_passes() -> None:
    assert restricted_violations(compliant_pod()) == []


def test_per_container_settings_may_replace_pod_settings() -> None:
    pod = compliant_pod()
    pod["securityContext"] = {}
    for container in [*pod["initContainers"], *pod["containers"]]:
        container["securityContext"]["runAsNonRoot"] = True
        container["securityContext"]["seccompProfile"] = {"type": "Localhost"}
    assert restricted_violations(pod) == []


def test_net_bind_service_may_be_added() -> None:
    pod = compliant_pod()
    pod["containers"][0]["securityContext"]["capabilities"]["add"] = ["NET_BIND_SERVICE"]
    assert restricted_violations(pod) == []


Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(pod: dict[str, Any]) -> None:
        target: Any = pod
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
        target[int(last) if last.isdigit() else last] = value

    return mutate


def _delete(path: str) -> Mutation:
    def mutate(pod: dict[str, Any]) -> None:
        target: Any = pod
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        del target[last]

    return mutate


C = "containers.0.securityContext"
CP = "spec.containers[0].securityContext"
CASES: list[tuple[str, Mutation, str]] = [
    ("hostNetwork", _set("hostNetwork", True), "spec.hostNetwork"),
    ("hostPID", _set("hostPID", True), "spec.hostPID"),
    ("hostIPC", _set("hostIPC", True), "spec.hostIPC"),
    (
        "hostPath",
        _set("volumes.0", {"name": "h", "hostPath": {"path": "/"}}),
        "spec.volumes[0].hostPath",
    ),
    ("nfs volume", _set("volumes.1", {"name": "n", "nfs": {}}), "spec.volumes[1].nfs"),
    ("hostPort", _set("containers.0.ports.0.hostPort", 80), "spec.containers[0].ports[0].hostPort"),
    ("privileged", _set(f"{C}.privileged", True), f"{CP}.privileged"),
    ("escalation", _set(f"{C}.allowPrivilegeEscalation", True), f"{CP}.allowPrivilegeEscalation"),
    (
        "escalation unset",
        _delete(f"{C}.allowPrivilegeEscalation"),
        f"{CP}.allowPrivilegeEscalation",
    ),
    (
        "init escalation",
        _delete("initContainers.0.securityContext.allowPrivilegeEscalation"),
        "spec.initContainers[0].securityContext.allowPrivilegeEscalation",
    ),
    ("drop not ALL", _set(f"{C}.capabilities.drop", ["NET_RAW"]), f"{CP}.capabilities.drop"),
    ("add SYS_ADMIN", _set(f"{C}.capabilities.add", ["SYS_ADMIN"]), f"{CP}.capabilities.add"),
    ("add CHOWN", _set(f"{C}.capabilities.add", ["CHOWN"]), f"{CP}.capabilities.add"),
    ("procMount", _set(f"{C}.procMount", "Unmasked"), f"{CP}.procMount"),
    ("root user", _set("securityContext.runAsUser", 0), "spec.securityContext.runAsUser"),
    ("container root", _set(f"{C}.runAsUser", 0), f"{CP}.runAsUser"),
    ("nonroot unset", _delete("securityContext.runAsNonRoot"), f"{CP}.runAsNonRoot"),
    ("container root ok", _set(f"{C}.runAsNonRoot", False), f"{CP}.runAsNonRoot"),
    ("seccomp unset", _delete("securityContext.seccompProfile"), f"{CP}.seccompProfile"),
    (
        "seccomp unconfined",
        _set("securityContext.seccompProfile", {"type": "Unconfined"}),
        "spec.securityContext.seccompProfile.type",
    ),
    (
        "container unconfined",
        _set(f"{C}.seccompProfile", {"type": "Unconfined"}),
        f"{CP}.seccompProfile.type",
    ),
    (
        "selinux type",
        _set("securityContext.seLinuxOptions", {"type": "spc_t"}),
        "spec.securityContext.seLinuxOptions.type",
    ),
    ("selinux user", _set(f"{C}.seLinuxOptions", {"user": "root"}), f"{CP}.seLinuxOptions.user"),
    (
        "apparmor",
        _set(f"{C}.appArmorProfile", {"type": "Unconfined"}),
        f"{CP}.appArmorProfile.type",
    ),
    (
        "hostProcess",
        _set(f"{C}.windowsOptions", {"hostProcess": True}),
        f"{CP}.windowsOptions.hostProcess",
    ),
    (
        "unsafe sysctl",
        _set("securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}]),
        "spec.securityContext.sysctls[0]",
    ),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_breach_is_reported_at_its_field(mutate: Mutation, expected: str) -> None:
    pod = copy.deepcopy(compliant_pod())
    mutate(pod)
    violations = restricted_violations(pod)
    assert any(v.startswith(expected) for v in violations), violations
    # Nothing else is reported: a pod-level breach may be reported once per container.
    field = expected.rsplit(".", 1)[-1]
    assert all(v.split(":")[0].endswith(field) for v in violations), violations


def test_safe_sysctl_is_allowed() -> None:
    pod = compliant_pod()
    pod["securityContext"]["sysctls"] = [{"name": "net.ipv4.ip_local_port_range", "value": "1 2"}]
    assert restricted_violations(pod) == []


def test_apparmor_annotations() -> None:
    key = "container.apparmor.security.beta.kubernetes.io/app"
    assert restricted_violations(compliant_pod(), {key: "runtime/default"}) == []
    assert restricted_violations(compliant_pod(), {key: "localhost/profile"}) == []
    assert restricted_violations(compliant_pod(), {key: "unconfined"}) == [
        f"metadata.annotations[{key}]: unconfined is not allowed"
    ]


def test_pod_templates_of_workloads() -> None:
    pod = compliant_pod()
    template = {"metadata": {"annotations": {"a": "b"}}, "spec": pod}
    assert pod_templates({"kind": "Deployment", "spec": {"template": template}}) == [
        (pod, {"a": "b"})
    ]
    assert pod_templates({"kind": "Job", "spec": {"template": template}}) == [(pod, {"a": "b"})]
    cron = {"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": template}}}}
    assert pod_templates(cron) == [(pod, {"a": "b"})]
    assert pod_templates({"kind": "Pod", "metadata": {}, "spec": pod}) == [(pod, {})]
    assert pod_templates({"kind": "Service", "spec": {}}) == []
