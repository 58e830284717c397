"""The Pod Security Standards' "restricted" profile, checked field by field on a pod spec.

Used by the chart tests (every pod the chart renders) and by tests of the operator's builders
(every pod the operator creates): ``restricted_violations(pod_spec)`` lists each field that
breaks the profile, as "<path>: <why>", and is empty for a compliant pod. The controls are those
of the baseline profile plus the restricted ones, as Kubernetes' PodSecurity admission applies
them; Windows-only fields are checked only where they could grant host access.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

# Capabilities baseline allows to add; restricted allows only NET_BIND_SERVICE.
RESTRICTED_ADDABLE_CAPABILITIES = frozenset({"NET_BIND_SERVICE"})
ALLOWED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
ALLOWED_SELINUX_TYPES = frozenset(
    {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
)
ALLOWED_SECCOMP_TYPES = frozenset({"RuntimeDefault", "Localhost"})
ALLOWED_APPARMOR_TYPES = frozenset({"RuntimeDefault", "Localhost"})
APPARMOR_ANNOTATION_PREFIX = "container.apparmor.security.beta.kubernetes.io/"
CONTAINER_LISTS = ("initContainers", "containers", "ephemeralContainers")
# Volume entries other than the volume source.
VOLUME_META_FIELDS = frozenset({"name"})


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for list_name in CONTAINER_LISTS:
        for index, container in enumerate(pod_spec.get(list_name) or ()):
            yield f"spec.{list_name}[{index}]", container


def _host_access(pod_spec: Mapping[str, Any]) -> Iterator[str]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(field):
            yield f"spec.{field}: host namespaces are not allowed"
    for index, volume in enumerate(pod_spec.get("volumes") or ()):
        sources = set(volume) - VOLUME_META_FIELDS
        for source in sorted(sources - ALLOWED_VOLUME_TYPES):
            yield f"spec.volumes[{index}].{source}: volume type is not allowed"
    for path, container in _containers(pod_spec):
        for index, port in enumerate(container.get("ports") or ()):
            if port.get("hostPort"):
                yield f"{path}.ports[{index}].hostPort: host ports are not allowed"


def _sysctls(pod_context: Mapping[str, Any]) -> Iterator[str]:
    for index, sysctl in enumerate(pod_context.get("sysctls") or ()):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            name = sysctl.get("name")
            yield f"spec.securityContext.sysctls[{index}]: {name} is not a safe sysctl"


def _shared_fields(path: str, context: Mapping[str, Any]) -> Iterator[str]:
    """Fields valid at both pod and container level."""
    if (context.get("windowsOptions") or {}).get("hostProcess"):
        yield f"{path}.windowsOptions.hostProcess: host processes are not allowed"
    selinux = context.get("seLinuxOptions") or {}
    if selinux.get("type", "") not in ALLOWED_SELINUX_TYPES:
        yield f"{path}.seLinuxOptions.type: {selinux['type']} is not allowed"
    for field in ("user", "role"):
        if selinux.get(field):
            yield f"{path}.seLinuxOptions.{field}: must not be set"
    apparmor = context.get("appArmorProfile")
    if apparmor is not None and apparmor.get("type") not in ALLOWED_APPARMOR_TYPES:
        yield f"{path}.appArmorProfile.type: {apparmor.get('type')} is not allowed"
    if context.get("runAsUser") == 0:
        yield f"{path}.runAsUser: must not be 0"
    if context.get("runAsNonRoot") is False:
        yield f"{path}.runAsNonRoot: must not be false"
    seccomp = context.get("seccompProfile")
    if seccomp is not None and seccomp.get("type") not in ALLOWED_SECCOMP_TYPES:
        yield f"{path}.seccompProfile.type: {seccomp.get('type')} is not allowed"


def _container_fields(path: str, context: Mapping[str, Any]) -> Iterator[str]:
    if context.get("privileged"):
        yield f"{path}.privileged: privileged containers are not allowed"
    if context.get("allowPrivilegeEscalation") is not False:
        yield f"{path}.allowPrivilegeEscalation: must be false"
    if context.get("procMount", "Default") != "Default":
        yield f"{path}.procMount: must be Default"
    capabilities = context.get("capabilities") or {}
    if "ALL" not in (capabilities.get("drop") or ()):
        yield f"{path}.capabilities.drop: must include ALL"
    for capability in capabilities.get("add") or ():
        if capability not in RESTRICTED_ADDABLE_CAPABILITIES:
            yield f"{path}.capabilities.add: {capability} is not allowed"


def _apparmor_annotations(annotations: Mapping[str, str]) -> Iterator[str]:
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION_PREFIX) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            yield f"metadata.annotations[{key}]: {value} is not allowed"


def restricted_violations(
    pod_spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None
) -> list[str]:
    """Every way ``pod_spec`` (with its pod's ``annotations``) breaks the restricted profile."""
    found = [*_host_access(pod_spec), *_apparmor_annotations(annotations or {})]
    pod_context: Mapping[str, Any] = pod_spec.get("securityContext") or {}
    found += _sysctls(pod_context)
    found += _shared_fields("spec.securityContext", pod_context)
    pod_non_root = pod_context.get("runAsNonRoot") is True
    pod_seccomp = "seccompProfile" in pod_context
    for path, container in _containers(pod_spec):
        context: Mapping[str, Any] = container.get("securityContext") or {}
        context_path = f"{path}.securityContext"
        found += _shared_fields(context_path, context)
        found += _container_fields(context_path, context)
        # Both may be set once for the pod, or on every container.
        if not pod_non_root and context.get("runAsNonRoot") is not True:
            found.append(f"{context_path}.runAsNonRoot: must be true (here or for the pod)")
        if not pod_seccomp and "seccompProfile" not in context:
            found.append(f"{context_path}.seccompProfile: must be set (here or for the pod)")
    return found


def pod_templates(obj: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Mapping[str, str]]]:
    """The pod specs (with pod annotations) an object creates: a Pod's own, a workload's
    template, a CronJob's Job template; empty for objects that create no pods."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return [(spec, (obj.get("metadata") or {}).get("annotations") or {})]
    if kind == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    elif kind not in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        return []
    template = spec.get("template") or {}
    return [(template.get("spec") or {}, (template.get("metadata") or {}).get("annotations") or {})]
