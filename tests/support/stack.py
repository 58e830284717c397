"""corral's whole stack on one machine without containers, for ``make up`` and the e2e tests.

The control plane (``controlplane``), the CRDs, the node agent (``nodeagent``: runtime pods and pull
Jobs run the real ``corral serve`` / ``corral pull`` as local processes in network namespaces), the
operator (``corral-operator``, watching every namespace) and the gateway
(``python -m corral_operator.gateway``, a local process on 127.0.0.1: there is no kube-proxy here,
so a Service's ClusterIP leads nowhere, while the host reaches every pod IP)::

    python -m tests.support.stack up   [--dir .stack] [--port 11434]   # + the local sample
    python -m tests.support.stack down [--dir .stack]

There is no network to pull from, so the sample's Model reads the bundled GGUF from a claim:
``seed()`` creates the claim ``corral-seed``, lets the node agent's provisioner bind it and links
the file into it, and the Model's source is ``pvc://corral-seed/gemma-3-270m-q4_k_m.gguf``.

Every process the stack starts is recorded in ``DIR/pids.json`` as it starts, so ``down`` (from
this process or another one) stops all of them, then removes any network namespace the node
agent left behind, then the control plane and the state directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corral_operator.settings import OperatorSettings
from corral_runtime.testmodel import test_model_path
from devstack.controlplane import ControlPlane, _alive, _signal_group
from devstack.poll import wait_for
from tests.cluster.operator.support import Operator
from tests.support.nodeagent.network import kill_netns, list_netns

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
SAMPLE = ROOT / "manifests" / "samples" / "local-gemma3-270m.yaml"
CHART_VALUES = ROOT / "charts" / "corral" / "values.yaml"
SEED_CLAIM = "corral-seed"
NODE = "corral-local"
# The runtime image the operator puts in pull Jobs and runtime pods; the node agent maps it to
# this environment's `corral`.
RUNTIME_IMAGE = OperatorSettings().runtime_image
# Stop order: nothing should react to the pods going away, and the node agent needs the API
# server to delete its Nodes and pods.
STOP_ORDER = ("gateway", "operator", "nodeagent")
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str) -> bool:
    try:
        with NO_PROXY.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def image_map() -> dict[str, Any]:
    """The node agent's image map: the runtime image runs this environment's ``corral``, the
    operator image (operator/Dockerfile: the operator and the gateway) its ``corral-operator``.
    Both under the repositories the operator's settings and the chart's values name."""
    bin_dir = Path(sys.executable).parent
    corral, operator = bin_dir / "corral", bin_dir / "corral-operator"
    for program in (corral, operator):
        if not program.exists():
            raise FileNotFoundError(f"{program} is missing: run `make install`")
    # Pods name `corral`, `corral-operator` or `python` as their command (it replaces the
    # entrypoint), so PATH must find this environment's first.
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "/usr/bin:/bin")])
    values = yaml.safe_load(CHART_VALUES.read_text())
    runtime = {RUNTIME_IMAGE.rsplit(":", 1)[0], values["runtime"]["image"]["repository"]}
    images: dict[str, Any] = {
        repository: {"entrypoint": [str(corral)], "env": {"PATH": path}} for repository in runtime
    }
    images[values["image"]["repository"]] = {
        "entrypoint": [str(operator)],
        "env": {"PATH": path, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"},
    }
    return {"images": images}


@dataclass
class Stack:
    """Handle on a stack whose state lives in ``state_dir``.

    ``plane``, when given, is a control plane someone else runs (the test session's): it is used
    and left running. Otherwise the stack runs its own under ``state_dir/control-plane``.
    """

    state_dir: Path
    plane: ControlPlane | None = None
    # Children started by this process, kept so that they are reaped by their Popen handles.
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        self._own_plane = self.plane is None
        if self.plane is None:
            self.plane = ControlPlane(self.state_dir / "control-plane")

    # -- paths and recorded state ------------------------------------------------------------

    @property
    def control_plane(self) -> ControlPlane:
        assert self.plane is not None
        return self.plane

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def _read(self, name: str) -> dict[str, Any]:
        path = self.state_dir / name
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _record(self, name: str, **values: Any) -> None:
        data = {**self._read(name), **values}
        (self.state_dir / name).write_text(json.dumps(data, indent=2))

    @property
    def info(self) -> dict[str, Any]:
        return self._read("info.json")

    @property
    def gateway_url(self) -> str:
        return str(self.info["gateway"])

    def is_running(self) -> bool:
        pids = self._read("pids.json")
        return (
            all(name in pids for name in STOP_ORDER)
            and all(_alive(int(pid)) for pid in pids.values())
            and self.control_plane.is_running()
        )

    # -- up ----------------------------------------------------------------------------------

    def up(
        self,
        *,
        gateway_port: int = 11434,
        operator_env: Mapping[str, str] | None = None,
        gateway_env: Mapping[str, str] | None = None,
        node_only: bool = False,
    ) -> None:
        """Start every component; on any failure, stop what was started and re-raise.

        ``node_only``: the control plane and the node agent only, no CRDs and no operator or
        gateway process (for installing corral into the cluster, e.g. with its chart)."""
        if self.state_dir.exists():
            self.down()
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        try:
            if self._own_plane:
                self.control_plane.start()
            if node_only:
                self._start_node_agent()
                self._record("info.json", kubeconfig=str(self.kubeconfig))
                return
            self.kubectl("apply", "-f", str(ROOT / "crds"))
            for crd in ("models.corral.dev", "modelservers.corral.dev"):
                self.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")
            self._start_node_agent()
            self._start_operator(operator_env or {})
            url = self.start_gateway(gateway_port, gateway_env or {}, name="gateway")
            self._record("info.json", gateway=url, kubeconfig=str(self.kubeconfig))
        except BaseException:
            self.down()
            raise

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
            )
        self._adopt(name, proc)
        return proc

    def _adopt(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        self._procs[name] = proc
        self._record("pids.json", **{name: proc.pid})

    def _log_tail(self, name: str) -> str:
        try:
            return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def _start_node_agent(self) -> None:
        map_file = self.state_dir / "images.json"
        map_file.write_text(json.dumps(image_map(), indent=2))
        proc = self._spawn(
            "nodeagent",
            [
                sys.executable,
                "-m",
                "tests.support.nodeagent",
                "--kubeconfig",
                str(self.kubeconfig),
                "--node",
                NODE,
                "--image-map",
                str(map_file),
                "--state-dir",
                str(self.state_dir / "node"),
                "--cpu",
                "8",
                "--memory",
                "16Gi",
                "--restart-backoff",
                "2",
                "--heartbeat",
                "5",
                "--shutdown-grace",
                "5",
            ],
            {"PYTHONUNBUFFERED": "1"},
        )

        def ready() -> str | None:
            if proc.poll() is not None:
                raise RuntimeError(f"node agent exited: {self._log_tail('nodeagent')}")
            for line in self._log_tail("nodeagent").splitlines():
                if line.startswith("node agent ready"):
                    return line
            return None

        line = wait_for("the node agent", ready, 60)
        # "node agent ready: agent <id>; <node>=<ip> pods <cidr>; logs under <dir>"
        aid = line.split("agent ", 2)[2].split(";")[0]
        host_ip = line.split(f"{NODE}=", 1)[1].split()[0]
        self._record("info.json", agent=aid, node=NODE, node_ip=host_ip)

    def _start_operator(self, extra: Mapping[str, str]) -> None:
        env = {
            # Every namespace: the e2e tests use a fresh one per test.
            "CORRAL_OPERATOR_NAMESPACES": "",
            "CORRAL_OPERATOR_KEEP_ALIVE_CHECK_SECONDS": "2",
            **extra,
        }
        operator = Operator(self.kubeconfig, "", self.logs, env)
        try:
            operator.start()
        finally:
            if operator.proc is not None:
                self._adopt("operator", operator.proc)

    def start_gateway(
        self, port: int, env: Mapping[str, str], name: str | None = None, host: str = "127.0.0.1"
    ) -> str:
        """Start a gateway process on ``host:port``; returns its URL. Tests may start extra
        gateways with their own settings (they are stopped by ``down`` too)."""
        name = name or f"gateway-{port}"
        proc = self._spawn(
            name,
            [sys.executable, "-m", "corral_operator.gateway"],
            {
                "CORRAL_GATEWAY_KUBECONFIG": str(self.kubeconfig),
                "CORRAL_GATEWAY_HOST": host,
                "CORRAL_GATEWAY_PORT": str(port),
                **env,
            },
        )
        url = f"http://{host}:{port}"

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited: {self._log_tail(name)}")
            return http_ok(url + "/healthz")

        wait_for(name, healthy, 60)
        return url

    def stop_process(self, name: str, grace: float = 15.0) -> None:
        """SIGTERM a recorded process group, SIGKILL it after ``grace``."""
        pid = self._read("pids.json").get(name)
        if pid is None:
            return
        _signal_group(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(int(pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(int(pid), signal.SIGKILL)
        while _alive(int(pid)) and time.monotonic() < deadline + 5:
            time.sleep(0.05)
        proc = self._procs.pop(name, None)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        pids = self._read("pids.json")
        pids.pop(name, None)
        (self.state_dir / "pids.json").write_text(json.dumps(pids, indent=2))

    # -- down --------------------------------------------------------------------------------

    def down(self) -> None:
        """Stop everything this stack started and remove its state; safe to call repeatedly,
        after a partial start and from another process."""
        pids = self._read("pids.json")
        aid = self.info.get("agent")
        # Extra gateways first, then the fixed order.
        names = [n for n in pids if n not in STOP_ORDER] + [n for n in STOP_ORDER if n in pids]
        try:
            for name in names:
                self.stop_process(name, grace=60.0 if name == "nodeagent" else 15.0)
        finally:
            # A node agent killed before its clean-up leaves namespaces (and their processes).
            if aid:
                for netns in list_netns():
                    if netns.startswith(f"corral-{aid}-"):
                        kill_netns(netns)
            if self._own_plane:
                self.control_plane.stop()
            # The components' logs stay for a look after the fact; the next `up` replaces them.
            if self.state_dir.is_dir():
                for entry in self.state_dir.iterdir():
                    if entry.name == "logs":
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)

    # -- the API through kubectl ---------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(KUBECTL), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        done = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if done.returncode != 0:
            if "NotFound" in done.stderr:
                return None
            raise RuntimeError(f"kubectl get {kind} {name}: {done.stderr.strip()}")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def condition(self, kind: str, name: str, namespace: str, type_: str) -> dict[str, Any]:
        obj = self.get(kind, name, namespace) or {}
        for cond in (obj.get("status") or {}).get("conditions") or ():
            if cond.get("type") == type_:
                return dict(cond)
        return {}

    # -- the sample ----------------------------------------------------------------------------

    def seed(
        self,
        namespace: str,
        claim: str = SEED_CLAIM,
        timeout: float = 60,
        source: Path | None = None,
    ) -> Path:
        """Make the bundled GGUF (or ``source``) available on ``claim`` (created when missing);
        returns the file's local path. The node agent's provisioner binds the claim to a local
        directory."""
        if self.get("persistentvolumeclaim", claim, namespace) is None:
            self.kubectl(
                "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(seed_claim(claim))
            )

        def bound_volume() -> str | None:
            pvc = self.get("persistentvolumeclaim", claim, namespace) or {}
            if (pvc.get("status") or {}).get("phase") != "Bound":
                return None
            return str(pvc["spec"]["volumeName"])

        volume = wait_for(f"claim {namespace}/{claim} bound", bound_volume, timeout)
        pv = self.get("persistentvolume", volume, "") or {}
        directory = Path(pv["spec"]["hostPath"]["path"])
        directory.mkdir(parents=True, exist_ok=True)
        source = source or test_model_path()
        target = directory / source.name
        if not target.exists():
            partial = directory / f".{source.name}.partial"
            partial.unlink(missing_ok=True)
            try:
                # A hard link costs nothing; another file system gets a copy.
                os.link(source, partial)
            except OSError:
                shutil.copyfile(source, partial)
            partial.replace(target)
        return target

    def apply_sample(self, namespace: str, sample: Path = SAMPLE) -> list[dict[str, Any]]:
        """Apply the sample: its claims first (seeded), then the rest. Returns its objects."""
        docs = [d for d in yaml.safe_load_all(sample.read_text()) if d]
        claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
        rest = [d for d in docs if d["kind"] != "PersistentVolumeClaim"]
        if claims:
            self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(claims))
        for claim in claims:
            self.seed(namespace, claim["metadata"]["name"])
        self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(rest))
        return docs

    def wait_ready(self, kind: str, name: str, namespace: str, timeout: float = 300) -> None:
        def ready() -> dict[str, Any] | None:
            cond = self.condition(kind, name, namespace, "Ready")
            if cond.get("status") == "False" and cond.get("reason") in FAILED_REASONS:
                raise RuntimeError(f"{kind}/{name}: {cond.get('reason')}: {cond.get('message')}")
            return cond if cond.get("status") == "True" else None

        wait_for(f"{kind}/{name} Ready", ready, timeout)


# Model conditions that will not turn Ready by waiting.
FAILED_REASONS = frozenset({"PullFailed", "InvalidSource", "UnknownCacheProfile"})


def seed_claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }


@contextlib.contextmanager
def running(state_dir: Path, **options: Any) -> Iterator[Stack]:
    """A stack for the duration of a ``with`` block, always taken down."""
    stack = Stack(state_dir)
    try:
        stack.up(**options)
        yield stack
    finally:
        stack.down()


def usage(stack: Stack, served: str) -> str:
    gateway = stack.gateway_url
    return f"""
corral is up. The gateway (every model, scale from zero) listens on {gateway}:

  curl {gateway}/api/chat \\
    -d '{{"model": "{served}", "stream": false,
         "messages": [{{"role": "user", "content": "Hello!"}}]}}'
  curl {gateway}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{served}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

The ModelServer starts with zero replicas: the first request starts its pod and waits for it
(a few seconds); after keepAliveSeconds without requests it goes back to zero.

  export KUBECONFIG={stack.kubeconfig}
  {KUBECTL.relative_to(ROOT)} get models,modelservers,pods -o wide

Logs: {stack.logs}/ (pods: {stack.state_dir / "node" / "pods"}). Stop everything: make down
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=ROOT / ".stack")
    parser.add_argument("--port", type=int, default=11434, help="the gateway's port on 127.0.0.1")
    parser.add_argument("--namespace", default="default", help="where the sample goes")
    args = parser.parse_args(argv)
    stack = Stack(args.dir)
    if args.action == "down":
        stack.down()
        print("corral stack stopped")
        return 0
    if args.action == "status":
        running_now = stack.is_running()
        print("running" if running_now else "not running")
        return 0 if running_now else 1
    if stack.is_running():
        print(f"corral stack already running; gateway {stack.gateway_url}; `make down` stops it")
        return 0
    if not _port_free(args.port):
        print(
            f"127.0.0.1:{args.port} is in use (another `corral serve`?); try --port",
            file=sys.stderr,
        )
        return 1
    started = time.monotonic()
    try:
        stack.up(gateway_port=args.port)
        docs = stack.apply_sample(args.namespace)
        for doc in docs:
            if doc["kind"] in ("Model", "ModelServer"):
                print(
                    f"waiting for {doc['kind']} {doc['metadata']['name']} to be Ready…", flush=True
                )
                stack.wait_ready(doc["kind"].lower(), doc["metadata"]["name"], args.namespace)
    except BaseException:
        stack.down()
        print(f"corral stack failed to start; its logs are in {stack.logs}", file=sys.stderr)
        raise
    model = next(d for d in docs if d["kind"] == "Model")
    print(f"corral stack up in {time.monotonic() - started:.0f}s")
    print(usage(stack, model["metadata"]["name"]))
    return 0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


if __name__ == "__main__":
    sys.exit(main())
