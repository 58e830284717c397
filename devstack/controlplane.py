"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, built from Debian's packages by scripts/build-control-plane.sh.

Used by the pytest ``control_plane`` fixture, by ``devstack.stack`` (``make up``) and by
``make cluster`` / ``make cluster-down``::

    python -m devstack.controlplane up   [--dir .cluster]
    python -m devstack.controlplane down [--dir .cluster]

RBAC is on; an admin (group system:masters) authenticates with a static token written into the
kubeconfig. Pods run only once a node joins (``devstack.node``); the API server reaches its
kubelet at the node's InternalIP (logs, exec, port-forward), and allows NodePorts from 11434 up,
so a Service can answer on Ollama's port.

Pods reach the API server the way in-cluster clients do: it listens on every address and
advertises ``SERVICE_ADDRESS`` -- the ``kubernetes`` Service's ClusterIP, added once as a /32 on
the host's loopback device and shared by every control plane on the machine (each has its own
port) -- so the ``kubernetes`` Endpoints name an address every pod routes to the host (through
kube-proxy's rules for the Service), and the serving certificate carries it. Where the address
cannot be added (no CAP_NET_ADMIN), the API server advertises 127.0.0.1 and pods cannot reach it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

KUBE_DEB_VERSION = "1.20.5+really1.20.2-1.1+deb12u1"
ROOT = Path(__file__).resolve().parents[1]
CACHE_ROOT = Path(
    os.environ.get("CORRAL_CACHE")
    or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "corral"
)
BIN_DIR = CACHE_ROOT / "kube" / KUBE_DEB_VERSION / "bin"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
SERVICE_CIDR = "10.96.0.0/12"
# The first address of SERVICE_CIDR: the ClusterIP the API server gives the `kubernetes` Service.
SERVICE_ADDRESS = "10.96.0.1"
NODE_PORT_RANGE = "11434-32767"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ensure_service_address(address: str = SERVICE_ADDRESS) -> bool:
    """Put ``address``/32 on the loopback device (once per machine; it is never removed, as other
    control planes may advertise it too). False when it is absent and cannot be added."""
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True
    )
    if f"inet {address}/" in shown.stdout:
        return True
    added = subprocess.run(
        ["ip", "addr", "add", f"{address}/32", "dev", "lo"], capture_output=True, text=True
    )
    return added.returncode == 0 or "File exists" in added.stderr


def ensure_binaries() -> None:
    """Build (once, then cached) the control-plane binaries."""
    have = all((BIN_DIR / b).is_file() for b in COMPONENTS[1:]) and shutil.which("etcd")
    if not have:
        subprocess.run(["bash", str(ROOT / "scripts" / "build-control-plane.sh")], check=True)


@dataclass
class ControlPlane:
    """Handle on a running control plane whose state lives in ``state_dir``."""

    state_dir: Path
    # Children started by this process; kept so they are reaped by their Popen handle.
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def client_ca(self) -> Path:
        """The CA that signs the API server's client certificates (a kubelet trusts it)."""
        return self.state_dir / "pki" / "server.crt"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "pids.json"

    def server(self) -> str:
        info = json.loads((self.state_dir / "info.json").read_text())
        return str(info["server"])

    def token(self) -> str:
        info = json.loads((self.state_dir / "info.json").read_text())
        return str(info["token"])

    def is_running(self) -> bool:
        if not self.pid_file.is_file():
            return False
        try:
            return self._ready()
        except OSError:
            return False

    def _ready(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.state_dir / "pki" / "server.crt"))
        req = urllib.request.Request(
            self.server() + "/readyz", headers={"Authorization": f"Bearer {self.token()}"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, ValueError):
            return False

    # -- start -------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        ensure_binaries()
        if self.state_dir.exists():
            self.stop()
        pki = self.state_dir / "pki"
        pki.mkdir(parents=True)
        logs = self.state_dir / "logs"
        logs.mkdir()
        advertise = SERVICE_ADDRESS if ensure_service_address() else "127.0.0.1"
        _make_pki(pki, advertise)
        token = secrets.token_hex(16)
        (pki / "tokens.csv").write_text(f"{token},admin,admin-uid,system:masters\n")
        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port("0.0.0.0")
        server = f"https://127.0.0.1:{api_port}"
        (self.state_dir / "info.json").write_text(
            json.dumps({"server": server, "token": token, "advertise": advertise})
        )
        self.kubeconfig.write_text(_kubeconfig(server, pki / "server.crt", token))
        self.kubeconfig.chmod(0o600)

        pids: dict[str, int] = {}
        procs = self._procs

        def spawn(name: str, argv: list[str]) -> None:
            log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
            procs[name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            pids[name] = procs[name].pid
            self.pid_file.write_text(json.dumps(pids))

        etcd = shutil.which("etcd") or "/usr/bin/etcd"
        spawn(
            "etcd",
            [
                etcd,
                "--data-dir",
                str(self.state_dir / "etcd"),
                "--name",
                "corral-test",
                "--listen-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"corral-test=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        spawn(
            "kube-apiserver",
            [
                str(BIN_DIR / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                # Every address: the kubeconfig uses 127.0.0.1, pods the advertised address.
                "--bind-address=0.0.0.0",
                f"--secure-port={api_port}",
                f"--advertise-address={advertise}",
                f"--tls-cert-file={pki / 'server.crt'}",
                f"--tls-private-key-file={pki / 'server.key'}",
                f"--client-ca-file={pki / 'server.crt'}",
                f"--kubelet-client-certificate={pki / 'kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'kubelet-client.key'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=Node,RBAC",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # The node's InternalIP, for logs, exec and port-forward (there is no DNS).
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                # A NodePort can be Ollama's port, so the gateway answers on 127.0.0.1:11434.
                f"--service-node-port-range={NODE_PORT_RANGE}",
                "--allow-privileged=false",
                "--insecure-port=0",
                "--enable-priority-and-fairness=false",
                "--v=1",
            ],
        )
        try:
            self._wait(lambda: self._ready(), timeout, "kube-apiserver", procs)
            spawn(
                "kube-controller-manager",
                [
                    str(BIN_DIR / "kube-controller-manager"),
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'server.crt'}",
                    "--use-service-account-credentials=false",
                    f"--secure-port={free_port()}",
                    "--port=0",
                    "--controllers=*,-nodeipam,-cloud-node-lifecycle",
                    "--v=1",
                ],
            )
            spawn(
                "kube-scheduler",
                [
                    str(BIN_DIR / "kube-scheduler"),
                    f"--kubeconfig={self.kubeconfig}",
                    "--leader-elect=false",
                    f"--secure-port={free_port()}",
                    "--port=0",
                    "--v=1",
                ],
            )
            # The default ServiceAccount appearing proves the controller-manager works.
            self._wait(self._default_sa_exists, timeout, "kube-controller-manager", procs)
        except BaseException:
            self.stop()
            raise

    def _default_sa_exists(self) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.state_dir / "pki" / "server.crt"))
        req = urllib.request.Request(
            self.server() + "/api/v1/namespaces/default/serviceaccounts/default",
            headers={"Authorization": f"Bearer {self.token()}"},
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, ValueError):
            return False

    def _wait(
        self, check: object, timeout: float, what: str, procs: dict[str, subprocess.Popen[bytes]]
    ) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    log = (self.state_dir / "logs" / f"{name}.log").read_text()[-3000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log}")
            if check():
                return
            time.sleep(0.2)
        raise TimeoutError(f"{what} not ready after {timeout}s (logs in {self.state_dir}/logs)")

    # -- stop --------------------------------------------------------------------------------

    def stop(self, grace: float = 10.0) -> None:
        """Stop every component (SIGTERM, then SIGKILL) and remove the state directory."""
        pids: dict[str, int] = {}
        if self.pid_file.is_file():
            try:
                pids = json.loads(self.pid_file.read_text())
            except ValueError:
                pids = {}
        for name in reversed(COMPONENTS):
            if name in pids:
                _signal_group(pids[name], signal.SIGTERM)
        deadline = time.monotonic() + grace
        for pid in pids.values():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid) and time.monotonic() < deadline + 5:
                time.sleep(0.05)
        for proc in self._procs.values():
            proc.wait(timeout=5)
        self._procs.clear()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _make_pki(pki: Path, advertise: str) -> None:
    """A self-signed serving certificate for 127.0.0.1 and the advertised address (which pods
    dial), and a service-account key pair."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-keyout",
        str(pki / "server.key"),
        "-out",
        str(pki / "server.crt"),
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        f"subjectAltName=IP:127.0.0.1,IP:{advertise},DNS:localhost,"
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,digitalSignature,keyEncipherment,keyCertSign",
    )
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    # The API server's client certificate for kubelets (logs, exec, port-forward), signed by the
    # cluster's CA: a node's kubelet accepts only clients that CA signed, and asks the API server
    # whether each may do what it asks (system:masters may).
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes",
        "-keyout", str(pki / "kubelet-client.key"), "-out", str(pki / "kubelet-client.csr"),
        "-subj", "/O=system:masters/CN=kube-apiserver-kubelet-client",
    )  # fmt: skip
    (pki / "kubelet-client.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl(
        "x509", "-req", "-in", str(pki / "kubelet-client.csr"), "-days", "30",
        "-CA", str(pki / "server.crt"), "-CAkey", str(pki / "server.key"), "-CAcreateserial",
        "-extfile", str(pki / "kubelet-client.ext"), "-out", str(pki / "kubelet-client.crt"),
    )  # fmt: skip


def _kubeconfig(server: str, ca: Path, token: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "corral", "cluster": {"server": server, "certificate-authority": str(ca)}}
            ],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "corral", "context": {"cluster": "corral", "user": "admin"}}],
            "current-context": "corral",
        },
        indent=2,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=ROOT / ".cluster")
    args = parser.parse_args(argv)
    plane = ControlPlane(args.dir.resolve())
    if args.action == "up":
        if plane.is_running():
            print(f"control plane already running; KUBECONFIG={plane.kubeconfig}")
            return 0
        started = time.monotonic()
        plane.start()
        print(
            f"control plane up in {time.monotonic() - started:.1f}s; KUBECONFIG={plane.kubeconfig}"
        )
    elif args.action == "down":
        plane.stop()
        print("control plane stopped")
    else:
        running = plane.is_running()
        print("running" if running else "not running")
        return 0 if running else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
