"""A real Kubernetes node on this machine: containerd, the kubelet, kube-proxy (iptables mode), a
CNI bridge, a pause image built from source, a device plugin advertising fake ``nvidia.com/gpu``
devices, and a hostPath provisioner behind a default StorageClass.

Everything the node keeps lives under its ``state_dir`` (containerd's root and state, the
kubelet's root, CNI configuration and IP allocations, logs), except what the kernel and these
programs only keep in fixed places: the bridge ``corral0``, the pod network namespaces, iptables
chains, three sysctls, the kubelet's device-plugin directory and containerd's shim sockets.
``stop()`` drains the node first (the kubelet tears each pod's network down through CNI as it
would on a cluster), then removes all of those, so nothing is left behind.

One node per machine (kube-proxy's iptables chains and the kubelet's device-plugin socket are
machine-wide): ``start()`` takes a lock and fails loudly while another node holds it. It needs
root; the binaries come from ``scripts/build-control-plane.sh`` (cached), the packages from
``scripts/node-deps.sh``.

    python -m devstack.node up --kubeconfig K [--dir .node] [--gpus 2] [--image ARCHIVE ...]
    python -m devstack.node down [--dir .node]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from devstack.controlplane import BIN_DIR, ROOT, _alive, _signal_group, free_port

NODE_NAME = "corral-node"
BRIDGE = "corral0"
# The bridge's own MAC, set explicitly: a bridge whose address the kernel picked takes the lowest
# MAC among its ports, so it changed whenever a pod came or went, and pods kept sending to the old
# one (their ARP entry for the node's IP still valid) -- replies to the kubelet's probes and to
# connections from the host were lost for tens of seconds after another pod went away.
BRIDGE_MAC = "02:42:0a:f4:00:01"
# The pods' subnet; the bridge holds its first address, which is also the node's InternalIP
# (an address of this host that the API server dials for logs, exec and port-forward, and that
# is not exposed on any outside interface).
POD_SUBNET = "10.244.0.0/24"
NODE_IP = "10.244.0.1"
CLUSTER_CIDR = "10.244.0.0/16"
CNI_NETWORK = "corral-devstack"
CNI_BIN = Path("/usr/lib/cni")
PAUSE_IMAGE = "localhost/corral-pause:3.2"
FAKE_GPU_RESOURCE = "nvidia.com/gpu"
# Fixed by the kubelet (pluginapi.DevicePluginPath), whatever its --root-dir.
DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
CNI_CACHE = Path("/var/lib/cni")
SHIM_SOCKETS = Path("/run/containerd/s")
NETNS_DIR = Path("/run/netns")
LOCK_FILE = Path("/run/corral-devstack-node.lock")
SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
}
# Set by kube-proxy (NodePorts on 127.0.0.1): recorded at start and restored at stop with ours.
SYSCTLS_RESTORED = (*SYSCTLS, "net/ipv4/conf/all/route_localnet")
STORAGE_CLASS = "standard"
# The StorageClass's provisioner: devstack.provisioner, which the node runs.
PROVISIONER = "devstack.corral.dev/hostpath"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"
# Directories of this machine the node's programs make when missing; removed again if they were.
MACHINE_DIRS = (DEVICE_PLUGIN_DIR.parent, CNI_CACHE, Path("/run/containerd"), NETNS_DIR)
IPTABLES_TABLES = ("nat", "filter", "mangle")
# The pods' masquerading, one chain for the whole subnet that the node sets up once (``CNI-``:
# stop removes it with the plugins' chains). The bridge plugin's ipMasq made a chain per pod
# instead, several iptables runs in each CNI ADD and DEL: measured with the real
# plugins, interleaved, ADD 45 -> 23 ms and DEL 88 -> 40 ms (medians of 15).
MASQUERADE_CHAIN = "CNI-CORRAL-MASQUERADE"
COMPONENTS = ("containerd", "kubelet", "kube-proxy", "fake-gpu", "provisioner")
# Set (to anything but "" or "0") for a node that logs its pods' starts in detail: the kubelet at
# -v=4 (its sync loop, volume mounts, sandbox and container steps) and containerd at debug level
# (CNI setup), for a timeline of where a container's start goes (bench/coldstart_cluster.py).
DEBUG_LOGS_ENV = "CORRAL_DEVSTACK_NODE_DEBUG"


class NodeError(RuntimeError):
    """The node cannot start, with what to do about it."""


# -- pure decisions ---------------------------------------------------------------------------


def containerd_socket(state_dir: Path) -> Path:
    return state_dir / "containerd" / "containerd.sock"


def debug_logs(environ: Mapping[str, str]) -> bool:
    """Whether the node logs its pods' starts in detail (``DEBUG_LOGS_ENV``)."""
    return environ.get(DEBUG_LOGS_ENV, "") not in ("", "0")


def containerd_config(state_dir: Path, debug: bool = False) -> str:
    """containerd's configuration: everything under ``state_dir``, the CRI plugin on our pause
    image and CNI configuration, and ``restrict_oom_score_adj`` (root here may lack
    CAP_SYS_RESOURCE, so runc could not lower a sandbox's oom_score_adj). ``debug``: logs at
    debug level (each CNI setup's start and end, among much else)."""
    c = state_dir / "containerd"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    level = "debug" if debug else "info"
    return f"""version = 2
root = {_toml(c / "root")}
state = {_toml(c / "state")}
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp"]

[debug]
  level = "{level}"

[grpc]
  address = {_toml(containerd_socket(state_dir))}

[ttrpc]
  address = {_toml(c / "containerd.sock.ttrpc")}

[{cri}]
  sandbox_image = {_toml(PAUSE_IMAGE)}
  restrict_oom_score_adj = true
  enable_selinux = false
  [{cri}.cni]
    bin_dir = {_toml(CNI_BIN)}
    conf_dir = {_toml(state_dir / "cni" / "net.d")}
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"""


def _toml(value: object) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(str(value))


def cni_config(state_dir: Path) -> dict[str, Any]:
    """A bridge network with host-local addresses (allocations under ``state_dir``), hairpin so a
    pod reaches itself through a Service, and portmap for hostPort. Traffic that leaves the
    network is masqueraded by the node's one rule (``masquerade_rules``), not by the bridge
    plugin per pod."""
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(state_dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def masquerade_rules() -> list[list[str]]:
    """The ``iptables`` arguments that masquerade what the pods send beyond their subnet: what
    the bridge plugin's ipMasq did per pod (its chain ACCEPTs the pods' own network and
    masquerades all else but multicast), once for the whole subnet."""
    nat = ["-t", "nat"]
    return [
        [*nat, "-N", MASQUERADE_CHAIN],
        [*nat, "-A", MASQUERADE_CHAIN, "-d", POD_SUBNET, "-j", "ACCEPT"],
        [*nat, "-A", MASQUERADE_CHAIN, "!", "-d", "224.0.0.0/4", "-j", "MASQUERADE"],
        [*nat, "-A", "POSTROUTING", "-s", POD_SUBNET, "-j", MASQUERADE_CHAIN],
    ]


def kubelet_args(
    state_dir: Path, kubeconfig: Path, healthz_port: int, client_ca: Path, verbosity: int = 1
) -> list[str]:
    """The kubelet's flags: a remote runtime (our containerd), cgroupfs without QoS cgroups (this
    machine has no systemd), image garbage collection off (no registry can give an image back),
    evictions only when the machine is really out of space or memory. Its API (logs, exec,
    port-forward) answers only clients with a certificate ``client_ca`` signed or a token the API
    server vouches for, and asks the API server whether each may do what it asks, as a
    production kubelet does (a pod that reaches the node's address gets nothing). ``verbosity``:
    its -v (4 logs each pod's sync, volume mounts, sandbox and container steps)."""
    kubelet_root = state_dir / "kubelet"
    return [
        str(BIN_DIR / "kubelet"),
        f"--kubeconfig={kubeconfig}",
        "--anonymous-auth=false",
        f"--client-ca-file={client_ca}",
        "--authentication-token-webhook=true",
        "--authorization-mode=Webhook",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
        f"--address={NODE_IP}",
        "--read-only-port=0",
        "--healthz-bind-address=127.0.0.1",
        f"--healthz-port={healthz_port}",
        f"--root-dir={kubelet_root}",
        f"--cert-dir={kubelet_root / 'pki'}",
        f"--volume-plugin-dir={kubelet_root / 'volume-plugins'}",
        "--container-runtime=remote",
        f"--container-runtime-endpoint=unix://{containerd_socket(state_dir)}",
        "--runtime-request-timeout=10m",
        f"--pod-infra-container-image={PAUSE_IMAGE}",
        "--cgroup-driver=cgroupfs",
        "--cgroups-per-qos=false",
        "--enforce-node-allocatable=",
        "--fail-swap-on=false",
        "--network-plugin=cni",
        f"--cni-bin-dir={CNI_BIN}",
        f"--cni-conf-dir={state_dir / 'cni' / 'net.d'}",
        "--make-iptables-util-chains=false",
        "--image-gc-high-threshold=100",
        "--image-gc-low-threshold=99",
        "--eviction-hard=memory.available<100Mi,nodefs.available<1%,imagefs.available<1%",
        "--serialize-image-pulls=false",
        "--node-labels=corral.dev/devstack=true",
        f"--v={verbosity}",
    ]


def kube_proxy_args(kubeconfig: Path, healthz_port: int, metrics_port: int) -> list[str]:
    return [
        str(BIN_DIR / "kube-proxy"),
        f"--kubeconfig={kubeconfig}",
        "--proxy-mode=iptables",
        f"--hostname-override={NODE_NAME}",
        f"--cluster-cidr={CLUSTER_CIDR}",
        # Leave the machine's conntrack table size and timeouts alone.
        "--conntrack-max-per-core=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        f"--healthz-bind-address=127.0.0.1:{healthz_port}",
        f"--metrics-bind-address=127.0.0.1:{metrics_port}",
        "--v=1",
    ]


def node_ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def allocatable_gpus(node: dict[str, Any]) -> int:
    value = (node.get("status", {}).get("allocatable") or {}).get(FAKE_GPU_RESOURCE, "0")
    try:
        return int(value)
    except ValueError:
        return 0


def storage_class() -> dict[str, Any]:
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": STORAGE_CLASS,
            "annotations": {DEFAULT_CLASS: "true"},
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
    }


def chains(iptables_save: str) -> list[str]:
    """The chains an ``iptables-save -t TABLE`` output declares."""
    return [line[1:].split()[0] for line in iptables_save.splitlines() if line.startswith(":")]


def chains_to_remove(
    iptables_save: str, before: Iterable[str], prefixes: Sequence[str] = ("KUBE-", "CNI-")
) -> tuple[list[list[str]], list[str]]:
    """From one table's ``iptables-save`` output: the chains with one of ``prefixes`` that were
    not there ``before`` (the node's: kube-proxy's, the kubelet's, the CNI plugins'), and the
    rules of other chains that jump to them (as ``-D`` arguments)."""
    existed = set(before)
    new = [c for c in chains(iptables_save) if c.startswith(tuple(prefixes)) and c not in existed]
    rules = []
    for line in iptables_save.splitlines():
        if not line.startswith("-A "):
            continue
        words = shlex.split(line[3:])
        jump = words.index("-j") + 1 if "-j" in words else 0
        if words[0] not in new and jump and jump < len(words) and words[jump] in new:
            rules.append(words)
    return rules, new


@dataclass(frozen=True, slots=True)
class Task:
    pid: int
    status: str  # RUNNING, STOPPED, ...


def tasks(tasks_ls: str) -> dict[str, Task]:
    """Container id to its task, from ``ctr tasks ls`` (a header, then ``TASK PID STATUS``)."""
    found = {}
    for line in tasks_ls.splitlines()[1:]:
        words = line.split()
        if len(words) >= 3 and words[1].isdigit():
            found[words[0]] = Task(int(words[1]), words[2])
    return found


# -- the pause image --------------------------------------------------------------------------


GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def pause_archive(binary: Path, out: Path, name: str = PAUSE_IMAGE) -> Path:
    """An OCI archive of one layer holding ``/pause`` (built from Kubernetes' pause.c), named
    ``name`` for containerd's import."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        data = binary.read_bytes()
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    diff = layer.getvalue()
    compressed = gzip.compress(diff, mtime=0)
    config = json.dumps(
        {
            "architecture": GOARCH.get(platform.machine(), platform.machine()),
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(diff)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar+gzip", compressed)],
        }
    ).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                **_descriptor("application/vnd.oci.image.manifest.v1+json", manifest),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": _tag(name),
                },
            }
        ],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index).encode(),
        **{f"blobs/sha256/{_digest(blob)[7:]}": blob for blob in (config, manifest, compressed)},
    }
    with tarfile.open(out, mode="w") as tar:
        for path, blob in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mtime = len(blob), 0
            tar.addfile(info, io.BytesIO(blob))
    return out


def _tag(name: str) -> str:
    """The tag of an image name (``latest`` when it has none; a registry's port is no tag)."""
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else "latest"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


# -- the node ---------------------------------------------------------------------------------


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def preflight() -> None:
    """Fail with what to do when something the node needs is missing."""
    if os.geteuid() != 0:
        raise NodeError("a node needs root (it runs containerd, the kubelet and kube-proxy)")
    missing = [
        b
        for b in ("kubelet", "kube-proxy", "pause", "corral-fake-gpu")
        if not (BIN_DIR / b).is_file()
    ]
    if missing:
        raise NodeError(f"{', '.join(missing)} missing in {BIN_DIR}: run `make control-plane`")
    programs = ("containerd", "runc", "ctr", "iptables", "iptables-save", "ip")
    absent = [p for p in programs if shutil.which(p) is None]
    absent += [
        f"{CNI_BIN}/{p}"
        for p in ("bridge", "host-local", "loopback", "portmap")
        if not (CNI_BIN / p).is_file()
    ]
    if absent:
        raise NodeError(f"{', '.join(absent)} not installed: run `bash scripts/node-deps.sh`")
    if (
        not Path("/sys/fs/cgroup/memory").is_dir()
        and not Path("/sys/fs/cgroup/cgroup.controllers").is_file()
    ):
        raise NodeError("no memory cgroup controller: containers could not be given memory limits")


@dataclass
class Node:
    """Handle on the node whose state lives in ``state_dir``; ``kubeconfig`` is the control
    plane's (the kubelet, kube-proxy and the provisioner use it)."""

    state_dir: Path
    kubeconfig: Path | None = None
    gpus: int = 2
    # The CA that signs the API server's client certificates (ControlPlane.client_ca); None: the
    # one next to the kubeconfig, where devstack.controlplane keeps it.
    client_ca_file: Path | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()

    # -- paths and records -------------------------------------------------------------------

    @property
    def client_ca(self) -> Path:
        if self.client_ca_file is not None:
            return self.client_ca_file
        assert self.kubeconfig is not None
        return self.kubeconfig.parent / "pki" / "server.crt"

    @property
    def socket(self) -> Path:
        return containerd_socket(self.state_dir)

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def _record_path(self) -> Path:
        return self.state_dir / "node.json"

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self._record_path().read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _record(self, **values: Any) -> None:
        data = {**self._read(), **values}
        self._record_path().write_text(json.dumps(data, indent=2))

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", str(self.socket), "-n", "k8s.io", *args, check=check)

    def api(self) -> Any:
        from kubernetes import client, config

        assert self.kubeconfig is not None
        loader: Any = config  # partly typed
        return client.CoreV1Api(loader.new_client_from_config(str(self.kubeconfig)))

    # -- start -------------------------------------------------------------------------------

    def start(self, images: Iterable[Path] = (), timeout: float = 120.0) -> None:
        """Start the node and wait until it is Ready with its fake GPUs allocatable; on any
        failure, stop what was started and re-raise."""
        if self.kubeconfig is None:
            raise NodeError("a node needs the control plane's kubeconfig")
        if not self.client_ca.is_file():
            raise NodeError(f"the API server's client CA {self.client_ca} is missing")
        preflight()
        if self.state_dir.exists():
            self.stop()
        shutil.rmtree(self.logs, ignore_errors=True)
        self._take_lock()
        for d in ("logs", "cni/net.d", "cni/ipam", "containerd", "kubelet", "volumes"):
            (self.state_dir / d).mkdir(parents=True, exist_ok=True)
        self._record(
            kubeconfig=str(self.kubeconfig),
            before=machine_state(),
            shims_before=_names(SHIM_SOCKETS),
            pids={},
        )
        try:
            for key, value in SYSCTLS.items():
                _sysctl(key, value)
            self._bridge_up()
            self._start_containerd(timeout)
            self.import_image(pause_archive(BIN_DIR / "pause", self.state_dir / "pause.tar"))
            for archive in images:
                self.import_image(archive)
            (self.state_dir / "cni" / "net.d" / "10-corral.conflist").write_text(
                json.dumps(cni_config(self.state_dir), indent=2)
            )
            self._spawn(
                "kubelet",
                kubelet_args(
                    self.state_dir,
                    self.kubeconfig,
                    free_port(),
                    self.client_ca,
                    verbosity=4 if debug_logs(os.environ) else 1,
                ),
            )
            self._spawn("kube-proxy", kube_proxy_args(self.kubeconfig, free_port(), free_port()))
            self._spawn(
                "fake-gpu",
                [
                    str(BIN_DIR / "corral-fake-gpu"),
                    f"--count={self.gpus}",
                    f"--resource={FAKE_GPU_RESOURCE}",
                ],
            )
            self._spawn(
                "provisioner",
                [
                    sys.executable,
                    "-m",
                    "devstack.provisioner",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--root",
                    str(self.state_dir / "volumes"),
                ],
            )
            self._wait(self._ready, timeout, "the node (Ready, with its fake GPUs allocatable)")
            self._apply_storage_class()
        except BaseException:
            self.stop()
            raise

    def _take_lock(self) -> None:
        """Claim the machine for this node: LOCK_FILE names the node that runs here; a node whose
        containerd or kubelet still lives keeps it."""
        with open(LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lock.seek(0)
            holder = lock.read().strip()
            if holder and Path(holder) != self.state_dir and Node(Path(holder)).any_alive():
                raise NodeError(
                    f"another corral node runs on this machine (state in {holder}): one node "
                    "per machine; stop it first (`make down`)"
                )
            lock.seek(0)
            lock.truncate(0)
            lock.write(f"{self.state_dir}\n")

    def _release_lock(self) -> None:
        with contextlib.suppress(OSError), open(LOCK_FILE, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            lock.seek(0)
            if lock.read().strip() == str(self.state_dir):
                LOCK_FILE.unlink()

    def any_alive(self) -> bool:
        pids = self._read().get("pids", {})
        return any(_alive(int(pid)) for pid in pids.values())

    def _bridge_up(self) -> None:
        if _run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "link", "set", BRIDGE, "address", BRIDGE_MAC)
        _run("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        # A node that died without its stop left the chain as it sets it up.
        if _run("iptables", "-t", "nat", "-S", MASQUERADE_CHAIN, check=False).returncode != 0:
            for rule in masquerade_rules():
                _run("iptables", *rule)

    def _start_containerd(self, timeout: float) -> None:
        config = self.state_dir / "containerd" / "config.toml"
        config.write_text(containerd_config(self.state_dir, debug_logs(os.environ)))
        self._spawn("containerd", ["containerd", "--config", str(config)])
        self._wait(
            lambda: self.socket.exists() and self.ctr("version", check=False).returncode == 0,
            timeout,
            "containerd",
        )

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def tag(self, source: str, target: str) -> None:
        """Give an imported image another name (as ``kind load`` does), so pod specs naming the
        public image run the one built here without pulling."""
        self.ctr("images", "tag", "--force", source, target)

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._procs[name] = proc
        self._record(pids={**self._read().get("pids", {}), name: proc.pid})

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise NodeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.5)
        raise TimeoutError(f"{what} not ready after {timeout:.0f}s (logs in {self.logs})")

    def log_tail(self, name: str, size: int = 3000) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def node(self) -> dict[str, Any]:
        core = self.api()
        return dict(core.api_client.sanitize_for_serialization(core.read_node(NODE_NAME)))

    def _ready(self) -> bool:
        node = self.node()
        return node_ready(node) and allocatable_gpus(node) == self.gpus

    def _apply_storage_class(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        storage = client.StorageV1Api(self.api().api_client)
        try:
            storage.create_storage_class(cast(Any, storage_class()))
        except ApiException as error:
            if error.status != 409:
                raise

    def is_running(self) -> bool:
        pids = self._read().get("pids", {})
        return all(name in pids and _alive(int(pids[name])) for name in COMPONENTS)

    # -- stop --------------------------------------------------------------------------------

    def drain(self, timeout: float = 60.0) -> None:
        """``kubectl drain``: cordon the node and delete its pods, then wait until containerd
        runs no pod sandbox (the kubelet has torn each one down, its network through CNI)."""
        from kubernetes.client.exceptions import ApiException

        core = self.api()
        try:
            core.patch_node(NODE_NAME, {"spec": {"unschedulable": True}})
            pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={NODE_NAME}")
            for pod in pods.items:
                with contextlib.suppress(ApiException):
                    core.delete_namespaced_pod(
                        pod.metadata.name, pod.metadata.namespace, grace_period_seconds=5
                    )
        except (ApiException, OSError) as error:
            print(
                f"devstack: draining {NODE_NAME} through the API failed ({error})", file=sys.stderr
            )
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._running_tasks():
            time.sleep(0.5)

    def _forget_node(self) -> None:
        """Delete the Node object (a node leaving the cluster), so the next start registers a
        fresh, schedulable one."""
        from kubernetes.client.exceptions import ApiException

        with contextlib.suppress(ApiException, OSError):
            self.api().delete_node(NODE_NAME)

    def task(self, container_id: str) -> Task | None:
        """A container's task; ``container_id`` as a pod's status gives it
        (``containerd://<id>``) or bare."""
        return tasks(self.ctr("tasks", "ls").stdout).get(container_id.removeprefix("containerd://"))

    def container_pid(self, container_id: str) -> int:
        """The host pid of a running container's first process."""
        task = self.task(container_id)
        if task is None or not task.pid:
            raise NodeError(f"no running task for container {container_id} on {NODE_NAME}")
        return task.pid

    def _running_tasks(self) -> list[str]:
        if not self.socket.exists():
            return []
        result = self.ctr("tasks", "ls", "-q", check=False)
        return result.stdout.split() if result.returncode == 0 else []

    def stop(self, grace: float = 10.0) -> None:
        """Drain (when the kubelet and the API server still run), stop every component and
        remove everything the node made, on this machine and under ``state_dir``."""
        record = self._read()
        pids: dict[str, int] = {k: int(v) for k, v in record.get("pids", {}).items()}
        kubeconfig = record.get("kubeconfig")
        if kubeconfig and self.kubeconfig is None:
            self.kubeconfig = Path(kubeconfig)
        if "kubelet" in pids and _alive(pids["kubelet"]) and self.kubeconfig:
            self.drain()
        for name in ("provisioner", "fake-gpu", "kubelet", "kube-proxy"):
            if name in pids:
                _stop_pid(pids[name], grace)
        if record and self.kubeconfig:
            self._forget_node()
        if record:
            _run(str(BIN_DIR / "kube-proxy"), "--cleanup", check=False)
        for task in self._running_tasks():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False)
        if "containerd" in pids:
            _stop_pid(pids["containerd"], grace)
        self._kill_shims()
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        if record:
            self._clean_machine(record)
        _unmount_under(self.state_dir)
        # The logs stay for a look after the fact; the next start replaces them.
        if self.state_dir.is_dir():
            for entry in self.state_dir.iterdir():
                if entry.name != "logs":
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
        self._release_lock()

    def _kill_shims(self) -> None:
        """containerd's shims outlive it; ours are the ones started with our socket."""
        needle = f"-address\0{self.socket}\0".encode()
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if needle in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)

    def _clean_machine(self, record: dict[str, Any]) -> None:
        """Undo what the node did outside its state directory, against ``machine_state()`` as
        it was when the node started."""
        state = record.get("before") or {}
        if NETNS_DIR.is_dir():
            for netns in NETNS_DIR.glob("cni-*"):
                if netns.name not in state.get("netns", []):
                    _run("ip", "netns", "delete", netns.name, check=False)
        if SHIM_SOCKETS.is_dir():
            before = set(record.get("shims_before", []))
            for sock in SHIM_SOCKETS.glob("*"):
                if sock.name not in before:
                    with contextlib.suppress(OSError):
                        sock.unlink()
        _run("ip", "link", "delete", BRIDGE, check=False)
        for table, before in (state.get("chains") or {}).items():
            rules, new = chains_to_remove(_iptables_save(table), before)
            for rule in rules:
                _run("iptables", "-t", table, "-D", *rule, check=False)
            for chain in new:
                _run("iptables", "-t", table, "-F", chain, check=False)
            for chain in new:
                _run("iptables", "-t", table, "-X", chain, check=False)
        for key, value in (state.get("sysctls") or {}).items():
            with contextlib.suppress(OSError):
                _sysctl(key, value)
        with contextlib.suppress(OSError):
            (DEVICE_PLUGIN_DIR / "corral-fake-gpu.sock").unlink()
        for cached in (CNI_CACHE / "results").glob(f"{CNI_NETWORK}-*"):
            with contextlib.suppress(OSError):
                cached.unlink()
        for path, existed in (state.get("dirs") or {}).items():
            if not existed:
                shutil.rmtree(path, ignore_errors=True)


def machine_state() -> dict[str, Any]:
    """What a node changes on this machine outside its state directory, for checking that a
    stopped node left it as it found it: network links and namespaces, iptables chains, the
    sysctls it sets, the fixed directories it may create."""
    links = _run("ip", "-o", "link", "show", check=False).stdout.splitlines()
    return {
        "links": sorted(line.split(":")[1].strip().split("@")[0] for line in links if ":" in line),
        "netns": _names(NETNS_DIR),
        "chains": {t: sorted(chains(_iptables_save(t))) for t in IPTABLES_TABLES},
        "sysctls": {k: _sysctl(k) for k in SYSCTLS_RESTORED if (Path("/proc/sys") / k).exists()},
        "dirs": {str(d): d.exists() for d in MACHINE_DIRS},
        "device_plugin_socket": (DEVICE_PLUGIN_DIR / "corral-fake-gpu.sock").exists(),
    }


def mounts_under(root: Path) -> list[str]:
    """The mount points at or under ``root`` (the octal escapes of /proc/self/mounts decoded)."""
    prefix = str(root) + "/"
    points = (
        line.split()[1].encode().decode("unicode_escape")
        for line in Path("/proc/self/mounts").read_text().splitlines()
    )
    return [point for point in points if point.startswith(prefix) or point == str(root)]


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*")) if directory.is_dir() else []


def _iptables_save(table: str) -> str:
    return _run("iptables-save", "-t", table, check=False).stdout


def _stop_pid(pid: int, grace: float) -> None:
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    _signal_group(pid, signal.SIGKILL)
    while _alive(pid) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def _unmount_under(root: Path) -> None:
    """Unmount everything mounted under ``root``, deepest first."""
    for _ in range(3):
        mounts = mounts_under(root)
        if not mounts:
            return
        for mount in sorted(mounts, key=len, reverse=True):
            _run("umount", "-l", mount, check=False)


def _sysctl(key: str, value: str | None = None) -> str:
    path = Path("/proc/sys") / key
    if value is not None:
        path.write_text(value)
        return value
    return path.read_text().strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.node", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the node against a running control plane")
    up.add_argument("--kubeconfig", type=Path, required=True)
    up.add_argument("--dir", type=Path, default=Path(".node"))
    up.add_argument("--gpus", type=int, default=2, help="fake nvidia.com/gpu devices (default 2)")
    up.add_argument(
        "--client-ca",
        type=Path,
        help="the CA of the API server's client certificates (default: the control plane's "
        "pki/server.crt next to the kubeconfig)",
    )
    up.add_argument(
        "--image", type=Path, action="append", default=[], help="an OCI archive to import"
    )
    down = sub.add_parser("down", help="stop the node and remove everything it made")
    down.add_argument("--dir", type=Path, default=Path(".node"))
    args = parser.parse_args(argv)
    node = Node(
        args.dir,
        getattr(args, "kubeconfig", None),
        getattr(args, "gpus", 2),
        getattr(args, "client_ca", None),
    )
    if args.command == "up":
        node.start(args.image)
        print(f"node {NODE_NAME} Ready (state in {node.state_dir})")
    else:
        node.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
