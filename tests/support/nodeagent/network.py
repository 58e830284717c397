"""Network namespaces for nodes and pods: every pod gets its own namespace and address.

Layout: each node owns a /24 out of ``10.244.0.0/16`` (the first free one, so several agents can
share a machine) carved into /30 slots. Slot 0 is the node itself: a veth pair whose host end
carries the node's InternalIP (``.1``). Slot k (1..63) is a pod: a veth pair, host end ``.4k+1``,
pod end ``eth0`` = ``.4k+2`` inside the pod's namespace, with a default route to the host end.
Point-to-point pairs need no bridge: the host reaches every pod, and every pod reaches the host's
addresses (the API server's advertised address among them). Pod-to-pod traffic (a gateway pod
calling runtime pods) passes through the host, so forwarding is turned on for the host ends only
(``net.ipv4.conf.<link>.forwarding``; the machine-wide ``ip_forward`` stays as it is).

Every namespace is named ``corral-<agent id>-…`` and every link has one end inside such a
namespace, so deleting the namespaces removes every link too. A registry under
``/run/corral-nodeagent`` records which agent (pid) owns which id and /24; at start-up the
namespaces of agents that are no longer alive are removed, their processes killed first.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = Path(os.environ.get("CORRAL_NODEAGENT_RUN_DIR", "/run/corral-nodeagent"))
NETNS_PREFIX = "corral-"
POD_SLOTS = 63
_OWNED = re.compile(rf"^{NETNS_PREFIX}([0-9a-f]{{6}})-")


class NetworkError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def list_netns() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]


def kill_netns(name: str, grace: float = 2.0) -> None:
    """Kill every process in a namespace (TERM, then KILL), then delete the namespace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in ip("netns", "pids", name, check=False).split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            pids = [int(p) for p in ip("netns", "pids", name, check=False).split()]
            time.sleep(0.05)
    ip("netns", "delete", name, check=False)


def _agent_alive(record: dict[str, object]) -> bool:
    pid = record.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"nodeagent" in cmdline


@contextlib.contextmanager
def _registry_lock() -> Iterator[None]:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with open(RUN_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _records() -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for path in RUN_DIR.glob("*.json"):
        try:
            out[path.stem] = json.loads(path.read_text())
        except (OSError, ValueError):
            out[path.stem] = {}
    return out


def cleanup_stale() -> list[str]:
    """Remove the namespaces and registry entries of agents that are gone; returns the names."""
    removed: list[str] = []
    with _registry_lock():
        records = _records()
        live = {aid for aid, rec in records.items() if _agent_alive(rec)}
        for name in list_netns():
            match = _OWNED.match(name)
            if match and match.group(1) not in live:
                kill_netns(name)
                removed.append(name)
        for aid in set(records) - live:
            (RUN_DIR / f"{aid}.json").unlink(missing_ok=True)
    return removed


@dataclass
class PodNetwork:
    netns: str
    pod_ip: str
    slot: int


class NodeNetwork:
    """The /24 of one node and the namespaces of its pods."""

    def __init__(self, agent: Agent, index: int, subnet: ipaddress.IPv4Network) -> None:
        self.agent = agent
        self.index = index
        self.subnet = subnet
        self.free_slots = list(range(1, POD_SLOTS + 1))
        base = subnet.network_address
        self.host_ip = str(base + 1)
        self.netns = f"{NETNS_PREFIX}{agent.aid}-n{index}"
        _veth_into_netns(self.netns, f"cr{agent.aid}n{index}", str(base + 1), str(base + 2))

    def add_pod(self) -> PodNetwork:
        if not self.free_slots:
            raise NetworkError(f"no free pod address in {self.subnet}")
        slot = self.free_slots.pop(0)
        seq = self.agent.next_seq()
        name = f"{NETNS_PREFIX}{self.agent.aid}-p{seq:x}"
        base = self.subnet.network_address + 4 * slot
        try:
            _veth_into_netns(name, f"cr{self.agent.aid}p{seq:x}", str(base + 1), str(base + 2))
        except NetworkError:
            self.free_slots.insert(0, slot)
            kill_netns(name)
            raise
        return PodNetwork(netns=name, pod_ip=str(base + 2), slot=slot)

    def remove_pod(self, pod: PodNetwork) -> None:
        kill_netns(pod.netns)
        self.free_slots.append(pod.slot)
        self.free_slots.sort()

    def close(self) -> None:
        kill_netns(self.netns)


def _veth_into_netns(netns: str, host_link: str, host_ip: str, inner_ip: str) -> None:
    """A fresh namespace with ``eth0`` = inner_ip/30 paired with host_link = host_ip/30."""
    peer = "cq" + host_link[2:]
    ip("netns", "add", netns)
    ip("link", "add", host_link, "type", "veth", "peer", "name", peer)
    ip("link", "set", peer, "netns", netns)
    ip("-n", netns, "link", "set", peer, "name", "eth0")
    ip("addr", "add", f"{host_ip}/30", "dev", host_link)
    ip("link", "set", host_link, "up")
    # IPv4 forwards what arrives on an interface whose own forwarding flag is on.
    Path(f"/proc/sys/net/ipv4/conf/{host_link}/forwarding").write_text("1\n")
    ip("-n", netns, "addr", "add", f"{inner_ip}/30", "dev", "eth0")
    ip("-n", netns, "link", "set", "lo", "up")
    ip("-n", netns, "link", "set", "eth0", "up")
    ip("-n", netns, "route", "add", "default", "via", host_ip)


class Agent:
    """This agent's identity in the registry and the /24s it holds."""

    def __init__(self, pool: str = "10.244.0.0/16") -> None:
        self.pool = ipaddress.IPv4Network(pool)
        self.aid = secrets.token_hex(3)
        self.subnets: list[str] = []
        self._seq = 0
        self._write()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _write(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "subnets": self.subnets}
        (RUN_DIR / f"{self.aid}.json").write_text(json.dumps(record))

    def add_node(self, index: int) -> NodeNetwork:
        with _registry_lock():
            taken = {
                s for rec in _records().values() if _agent_alive(rec) for s in _subnets_of(rec)
            }
            taken |= _host_subnets(self.pool)
            for subnet in self.pool.subnets(new_prefix=24):
                if str(subnet) not in taken:
                    self.subnets.append(str(subnet))
                    self._write()
                    break
            else:
                raise NetworkError(f"no free /24 left in {self.pool}")
        return NodeNetwork(self, index, subnet)

    def close(self) -> None:
        for name in list_netns():
            if name.startswith(f"{NETNS_PREFIX}{self.aid}-"):
                kill_netns(name)
        (RUN_DIR / f"{self.aid}.json").unlink(missing_ok=True)


def _subnets_of(record: dict[str, object]) -> list[str]:
    subnets = record.get("subnets")
    return [str(s) for s in subnets] if isinstance(subnets, list) else []


def _host_subnets(pool: ipaddress.IPv4Network) -> set[str]:
    """The /24s of the pool that already carry an address on this host (someone else's)."""
    taken: set[str] = set()
    for line in ip("-o", "-4", "addr", "show").splitlines():
        match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", line)
        if match and ipaddress.IPv4Address(match.group(1)) in pool:
            taken.add(str(ipaddress.IPv4Network(f"{match.group(1)}/24", strict=False)))
    return taken
