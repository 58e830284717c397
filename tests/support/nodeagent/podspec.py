"""Pure translation of a pod's container spec into what a local process gets.

Environment (``env``/``envFrom`` with values, fieldRef, resourceFieldRef, Secret and ConfigMap
references, ``$(VAR)`` expansion, and the ``kubernetes`` Service's variables a kubelet adds), and
volume mounts, honoured two ways (``mount_plan``):

- bind mounts: the container runs in its own mount namespace where the volume's directory is
  bind-mounted at its mountPath (read-only when the mount says so). That is only done where it
  hides nothing of the machine's: a mountPath that does not exist on the host (its directory is
  then created, empty, as the mountpoint, and left for the next container) or is an empty
  directory. The service-account token at /var/run/secrets/kubernetes.io/serviceaccount is one.
- rewriting, for the rest (a mountPath such as /tmp that holds the host's files, a mount of a
  single file, a mount below a rewritten one): any arg, env value or workingDir that is a mount
  path (or lies under one, or is ``--flag=`` followed by one) is rewritten to the local directory
  behind the volume. The termination-message file is always rewritten.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

Obj = Mapping[str, Any]
# (kind, namespace, name) -> the object's data decoded to text, or None when it does not exist.
Lookup = Callable[[str, str, str], Mapping[str, str] | None]


class ConfigError(Exception):
    """The container cannot be configured yet (e.g. a referenced Secret is missing)."""


class UnsupportedError(Exception):
    """The pod asks for something this node agent does not provide."""


_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY = re.compile(
    r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$"
)


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity ("500m", "2Gi", "1e3") as a Decimal."""
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ValueError(f"not a quantity: {text!r}")
    return Decimal(match.group(1)) * Decimal(_SUFFIXES[match.group(2) or ""])


def field_value(pod: Obj, path: str, pod_ip: str, host_ip: str) -> str:
    """The value of a downward-API fieldRef path."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIP": host_ip,
    }
    if path in simple:
        return str(simple[path])
    match = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise UnsupportedError(f"fieldRef {path!r} is not supported")


def resource_value(
    container: Obj, resource: str, divisor: str | None, node_allocatable: Mapping[str, str]
) -> str:
    """A resourceFieldRef value: the limit (or request), else the node's allocatable amount."""
    kind, _, name = resource.partition(".")
    resources = container.get("resources") or {}
    raw = (resources.get(kind) or {}).get(name)
    if raw is None:
        raw = node_allocatable.get(name, "0")
    value = parse_quantity(raw) / parse_quantity(divisor or "1")
    return str(math.ceil(value))


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: known names expand, ``$$`` escapes, the rest stays."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)


def container_env(
    pod: Obj,
    container: Obj,
    lookup: Lookup,
    pod_ip: str,
    host_ip: str,
    node_allocatable: Mapping[str, str],
) -> dict[str, str]:
    """The container's own environment, in Kubernetes order: envFrom, then env (later wins)."""
    namespace = pod.get("metadata", {}).get("namespace", "default")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
            ref = source.get(key)
            if ref is None:
                continue
            data = lookup(kind, namespace, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f"{kind.lower()} {ref['name']!r} not found")
            env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"], pod_ip, host_ip)
        elif "resourceFieldRef" in source:
            ref = source["resourceFieldRef"]
            env[name] = resource_value(
                container, ref["resource"], ref.get("divisor"), node_allocatable
            )
        else:
            kind, key = (
                ("Secret", "secretKeyRef")
                if "secretKeyRef" in source
                else ("ConfigMap", "configMapKeyRef")
            )
            ref = source.get(key)
            if ref is None:
                raise UnsupportedError(f"env {name}: valueFrom {sorted(source)} not supported")
            data = lookup(kind, namespace, ref["name"])
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                raise ConfigError(
                    f"{kind.lower()} {ref['name']!r} or its key "
                    f"{ref['key']!r} not found (env {name})"
                )
            env[name] = data[ref["key"]]
    return env


def kubernetes_service_env(host: str, port: int) -> dict[str, str]:
    """The variables a kubelet gives every container for the ``kubernetes`` Service (even with
    enableServiceLinks off), naming the address and port pods reach the API server at."""
    tcp = f"KUBERNETES_PORT_{port}_TCP"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": f"tcp://{host}:{port}",
        tcp: f"tcp://{host}:{port}",
        f"{tcp}_PROTO": "tcp",
        f"{tcp}_PORT": str(port),
        f"{tcp}_ADDR": host,
    }


# -- volumes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VolumePlan:
    """Where a pod volume lives locally and which files the agent must write into it."""

    name: str
    path: Path
    files: Mapping[str, bytes]
    owned: bool  # removed with the pod (emptyDir, Secret, ConfigMap) or shared (hostPath, PVC)


def projected_files(data: Mapping[str, str], items: Sequence[Obj] | None) -> dict[str, bytes]:
    """The files of a Secret/ConfigMap volume: every key, or only the listed items."""
    if not items:
        return {k: v.encode() for k, v in data.items()}
    return {item["path"]: data[item["key"]].encode() for item in items if item["key"] in data}


def decode_secret(obj: Obj) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
    data.update(obj.get("stringData") or {})
    return data


def plan_volumes(
    pod: Obj, pod_dir: Path, lookup: Lookup, claim_dir: Callable[[str, str], Path | None]
) -> list[VolumePlan]:
    """Local directories for every volume of the pod.

    ``claim_dir(namespace, claim)`` returns the directory of a bound claim, None while unbound.
    """
    namespace = pod.get("metadata", {}).get("namespace", "default")
    plans: list[VolumePlan] = []
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume["name"]
        own = pod_dir / "volumes" / name
        if "emptyDir" in volume:
            plans.append(VolumePlan(name, own, {}, owned=True))
        elif "hostPath" in volume:
            plans.append(VolumePlan(name, Path(volume["hostPath"]["path"]), {}, owned=False))
        elif "persistentVolumeClaim" in volume:
            claim = volume["persistentVolumeClaim"]["claimName"]
            path = claim_dir(namespace, claim)
            if path is None:
                raise ConfigError(f"persistentvolumeclaim {claim!r} is not bound")
            plans.append(VolumePlan(name, path, {}, owned=False))
        elif "secret" in volume or "configMap" in volume:
            kind, key, ref_key = (
                ("Secret", "secret", "secretName")
                if "secret" in volume
                else ("ConfigMap", "configMap", "name")
            )
            ref = volume[key]
            data = lookup(kind, namespace, ref[ref_key])
            if data is None:
                if ref.get("optional"):
                    data = {}
                else:
                    raise ConfigError(f"{kind.lower()} {ref[ref_key]!r} not found (volume {name})")
            plans.append(VolumePlan(name, own, projected_files(data, ref.get("items")), owned=True))
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise UnsupportedError(f"volume {name!r}: type {kinds} is not supported")
    return plans


# Kubernetes' default terminationMessagePath, and the most of the file a kubelet reports.
DEFAULT_TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096


def termination_path(container: Obj) -> str:
    """Where the container writes its termination message."""
    return str(container.get("terminationMessagePath") or DEFAULT_TERMINATION_MESSAGE_PATH)


def mount_table(container: Obj, volumes: Mapping[str, Path]) -> list[tuple[str, Path]]:
    """(mountPath, local path) for each mount, longest mount path first so nesting works."""
    table: list[tuple[str, Path]] = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in volumes:
            raise UnsupportedError(f"volumeMount {mount['name']!r} names no volume")
        local = volumes[mount["name"]]
        if mount.get("subPath"):
            local = local / mount["subPath"]
        table.append((mount["mountPath"].rstrip("/") or "/", local))
    return sorted(table, key=lambda entry: len(entry[0]), reverse=True)


def rewrite_path(value: str, mounts: Sequence[tuple[str, Path]]) -> str:
    """Rewrite a value that is (or, after ``--flag=``/``NAME=``, holds) a path under a mount."""
    head, sep, tail = value.partition("=")
    if sep and not value.startswith("/"):
        rewritten = _rewrite_one(tail, mounts)
        return head + sep + rewritten if rewritten is not None else value
    rewritten = _rewrite_one(value, mounts)
    return rewritten if rewritten is not None else value


def _rewrite_one(value: str, mounts: Sequence[tuple[str, Path]]) -> str | None:
    for mount_path, local in mounts:
        if value == mount_path:
            return str(local)
        if value.startswith(mount_path.rstrip("/") + "/"):
            return str(local / value[len(mount_path.rstrip("/")) + 1 :])
    return None


@dataclass(frozen=True)
class Bind:
    """A volume directory bind-mounted at ``mount_path`` in the container's mount namespace."""

    mount_path: str
    local: Path
    read_only: bool


@dataclass(frozen=True)
class MountPlan:
    """How each mount is honoured: ``binds`` in mounting order (parents first), ``rewrites``
    longest mount path first (as ``rewrite_path`` wants them)."""

    binds: list[Bind]
    rewrites: list[tuple[str, Path]]


def mount_plan(
    container: Obj, volumes: Mapping[str, Path], bindable: Callable[[str, Path], bool]
) -> MountPlan:
    """Split the container's mounts into binds and rewrites (see the module docstring).

    ``bindable(mount_path, local)`` says whether a bind there hides nothing on this machine. A
    mount below a rewritten one is rewritten too: its path on the host would not be the
    rewritten parent's."""
    read_only = {
        m["mountPath"].rstrip("/") or "/": bool(m.get("readOnly"))
        for m in container.get("volumeMounts") or []
    }
    binds: list[Bind] = []
    rewrites: list[tuple[str, Path]] = []
    for mount_path, local in reversed(mount_table(container, volumes)):  # parents first
        below_rewrite = any(_is_under(mount_path, parent) for parent, _ in rewrites)
        if not below_rewrite and bindable(mount_path, local):
            binds.append(Bind(mount_path, local, read_only.get(mount_path, False)))
        else:
            rewrites.append((mount_path, local))
    rewrites.sort(key=lambda entry: len(entry[0]), reverse=True)
    return MountPlan(binds, rewrites)


def _is_under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


# Run by ``sh -c`` in a fresh mount namespace: $1 is the working directory, then (mode, local,
# mount path) triples up to ``--``, then the container's argv, which replaces the shell.
_BIND_SCRIPT = (
    "p=/usr/sbin:/usr/bin:/sbin:/bin; "
    'wd=$1; shift; while [ "$1" != -- ]; do '
    'PATH=$p mkdir -p -- "$3" && PATH=$p mount --bind -- "$2" "$3" || exit 126; '
    'if [ "$1" = ro ]; then PATH=$p mount -o remount,bind,ro -- "$3" || exit 126; fi; '
    "shift 3; done; shift; "
    'cd -- "$wd" || exit 126; exec "$@"'
)


def bind_command(
    binds: Sequence[Bind], workdir: str, argv: Sequence[str], unshare: str = "unshare"
) -> list[str]:
    """``argv`` run in a private mount namespace with ``binds`` mounted, from ``workdir``; just
    ``argv`` when there is nothing to mount."""
    if not binds:
        return list(argv)
    triples = [
        part
        for bind in binds
        for part in ("ro" if bind.read_only else "rw", str(bind.local), bind.mount_path)
    ]
    return [
        unshare,
        "--mount",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        _BIND_SCRIPT,
        "sh",
        workdir,
        *triples,
        "--",
        *argv,
    ]
