"""Where a pod's start goes on the node, read from the node's own logs (``devstack.node``).

The API shows a container running only after the kubelet's next relist (up to a second after the
container started) and its status patch, so the pod's status says little about the node's own
steps. The kubelet's log (``-v=2`` and up: its sync loop; ``-v=3``: the pod worker's volume wait)
and containerd's (info: the sandbox and container calls; debug: the CNI setup) stamp each step,
which ``pod_start_phases`` collects for one pod as wall-clock times (``time.time()``).
"""

from __future__ import annotations

import datetime
import re

# The phases of a pod's start in the order the node takes them, with what each marks.
PHASES = {
    "kubelet_add": "the kubelet's sync loop took the pod from the API",
    "volumes_mounted": "the last of its volumes mounted (the volume manager's reconciler)",
    "volumes_seen": "the pod worker saw them mounted (it polls for them every 300 ms)",
    "sandbox_start": "the kubelet asked containerd for the pod's sandbox",
    "cni_start": "containerd began the pod's network setup (CNI ADD)",
    "cni_done": "the CNI plugins returned",
    "sandbox_done": "the sandbox (the pause container) runs",
    "container_created": "the runtime container created",
    "container_started": "the runtime container started",
}
KLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6}) ")
CONTAINERD = re.compile(r'^time="([^"]+)"')
SANDBOX_ID = re.compile(r'returns sandbox id \\"([0-9a-f]+)\\"')
CONTAINER_ID = re.compile(r'returns container id \\"([0-9a-f]+)\\"')


def klog_time(line: str, year: int) -> float | None:
    """The wall-clock time of a klog line (``I1207 01:27:20.139440 ...``), which carries no year
    and is in the node's local time."""
    found = KLOG.match(line)
    if found is None:
        return None
    month, day, hour, minute, second, micro = (int(g) for g in found.groups())
    moment = datetime.datetime(year, month, day, hour, minute, second, micro)
    return moment.astimezone().timestamp()


def containerd_time(line: str) -> float | None:
    """The wall-clock time of a containerd log line (``time="2026-12-07T01:27:20.442387815Z"``:
    RFC 3339 with nanoseconds, of which microseconds are kept)."""
    found = CONTAINERD.match(line)
    if found is None:
        return None
    head, _, rest = found.group(1).partition(".")
    fraction, zone = rest[:9].rstrip("Z"), rest[9:] or "Z"
    stamp = f"{head}.{(fraction[:6] or '0')}{'+00:00' if zone == 'Z' else zone}"
    return datetime.datetime.fromisoformat(stamp).timestamp()


def _first(lines: list[str], *needles: str) -> str | None:
    return next((line for line in lines if all(n in line for n in needles)), None)


def _last(lines: list[str], *needles: str) -> str | None:
    return next((line for line in reversed(lines) if all(n in line for n in needles)), None)


def pod_start_phases(
    kubelet_log: str, containerd_log: str, pod: str, uid: str, container: str, year: int
) -> dict[str, float]:
    """The wall-clock time of each of ``PHASES`` that the logs show for the first start of
    ``container`` in pod ``pod`` (``uid``); phases the logs' levels leave out are absent."""
    kubelet = [line for line in kubelet_log.splitlines() if uid in line]
    found: dict[str, str | None] = {
        "kubelet_add": _first(kubelet, "SyncLoop (ADD"),
        "volumes_mounted": _last(kubelet, "MountVolume.SetUp succeeded"),
        "volumes_seen": _first(kubelet, "All volumes are attached and mounted"),
    }
    phases = {
        name: at
        for name, line in found.items()
        if line is not None and (at := klog_time(line, year)) is not None
    }
    lines = containerd_log.splitlines()
    sandbox = f"Name:{pod},Uid:{uid},"
    opened = _first(lines, "RunPodSandbox for", sandbox)
    returned = _first(lines, "RunPodSandbox for", sandbox, "returns sandbox id")
    matched = SANDBOX_ID.search(returned) if returned else None
    sandbox_id = matched.group(1) if matched else None
    containerd: dict[str, str | None] = {"sandbox_start": opened, "sandbox_done": returned}
    if sandbox_id:
        containerd["cni_start"] = _first(lines, "begin cni setup", sandbox_id)
        containerd["cni_done"] = _first(lines, "cni result", sandbox_id)
        created = _first(
            lines,
            f'CreateContainer within sandbox \\"{sandbox_id}\\"',
            f"Name:{container},Attempt:0,",
            "returns container id",
        )
        containerd["container_created"] = created
        container_id = CONTAINER_ID.search(created) if created else None
        if container_id:
            containerd["container_started"] = _first(
                lines, f'StartContainer for \\"{container_id.group(1)}\\" returns successfully'
            )
    for name, line in containerd.items():
        at = containerd_time(line) if line else None
        if at is not None:
            phases[name] = at
    return phases
