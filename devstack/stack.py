"""corral on one machine the way a cluster runs it, for ``make up`` and the e2e tests.

The control plane (``devstack.controlplane``), a real node (``devstack.node``: containerd, the
kubelet, kube-proxy, fake GPUs, a default StorageClass), the images built from this repository
(``make images``, imported into the node under the names the chart asks for), and the chart
``helm install``-ed as a user installs it: the operator and the gateway run as Deployments, the
gateway behind a NodePort Service on Ollama's port, so ``127.0.0.1:11434`` reaches it through
kube-proxy the way a node port reaches a pod on any cluster::

    python -m devstack up   [--dir .stack] [--port 11434]   # + the local sample, Ready
    python -m devstack down [--dir .stack]

There is no network to pull from, so the sample's Model reads the bundled GGUF from a claim:
``seed()`` creates the claim ``corral-seed``, waits for the provisioner to bind it and links the
file into its volume; the Model's source is ``pvc://corral-seed/gemma-3-270m-q4_k_m.gguf``.

``down`` drains and stops the node (nothing stays on the machine: no process, mount, network
namespace, iptables chain, address or containerd state), stops the control plane and removes the
state directory except the logs (the components' and the pods', saved before the node goes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from corral_runtime.testmodel import test_model_path
from devstack import images as built_images
from devstack.controlplane import ROOT, ControlPlane
from devstack.node import Node
from devstack.poll import wait_for

KUBECTL = ROOT / ".tools" / "bin" / "kubectl"
HELM = ROOT / ".tools" / "bin" / "helm"
CHART = ROOT / "charts" / "corral"
SAMPLE = ROOT / "manifests" / "samples" / "local-gemma3-270m.yaml"
SEED_CLAIM = "corral-seed"
RELEASE = "corral"
NAMESPACE = "corral-system"


def install_values(gateway_port: int) -> dict[str, Any]:
    """What the stack sets on top of the chart's defaults: the gateway as a NodePort on
    ``gateway_port`` (127.0.0.1 reaches it through kube-proxy). Everything else is the default a
    user gets, images included (the node has them under the chart's names)."""
    return {"gateway": {"service": {"type": "NodePort", "nodePort": gateway_port}}}


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge Helm values (``extra`` wins; lists are replaced)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class Stack:
    """Handle on a stack whose state lives in ``state_dir``.

    ``plane`` and ``node``, when given, are a control plane and a node someone else runs (the
    test session's): they are used and left running, and ``down`` uninstalls the release
    instead. Otherwise the stack runs its own under ``state_dir``.
    """

    state_dir: Path
    plane: ControlPlane | None = None
    node: Node | None = None
    gpus: int = 2
    _own: dict[str, bool] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        self._own = {"plane": self.plane is None, "node": self.node is None}
        if self.plane is None:
            self.plane = ControlPlane(self.state_dir / "control-plane")
        if self.node is None:
            self.node = Node(
                self.state_dir / "node",
                self.plane.kubeconfig,
                gpus=self.gpus,
                client_ca_file=self.plane.client_ca,
            )

    # -- paths and recorded state ------------------------------------------------------------

    @property
    def control_plane(self) -> ControlPlane:
        assert self.plane is not None
        return self.plane

    @property
    def the_node(self) -> Node:
        assert self.node is not None
        return self.node

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def logs(self) -> Path:
        return self.state_dir / "logs"

    def _read(self, name: str) -> dict[str, Any]:
        try:
            data = json.loads((self.state_dir / name).read_text())
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
        return bool(self.info) and self.control_plane.is_running() and self.the_node.is_running()

    # -- up ----------------------------------------------------------------------------------

    def up(
        self,
        *,
        gateway_port: int = 11434,
        values: Mapping[str, Any] | None = None,
        install: bool = True,
        timeout: float = 300,
    ) -> None:
        """Start the control plane and the node (unless shared), give the node the images built
        from this tree, and ``helm install`` the chart (unless ``install`` is false: a bare
        cluster). On any failure, take down what was started and re-raise."""
        if self.state_dir.exists() and self.info:
            self.down()
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self._record("info.json", kubeconfig=str(self.kubeconfig))
        try:
            if self._own["plane"]:
                self.control_plane.start()
            images = built_images.build(self.logs / "images.log")
            if self._own["node"]:
                self.the_node.kubeconfig = self.kubeconfig
                self.the_node.start([image.archive for image in images])
            else:
                for image in images:
                    self.the_node.import_image(image.archive)
            built_images.tag_public(self.the_node, images)
            if install:
                self.install(merge(install_values(gateway_port), values or {}), timeout)
                self._record("info.json", gateway=f"http://127.0.0.1:{gateway_port}")
        except BaseException:
            self.down()
            raise

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(HELM), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)}: {done.stderr.strip()}")
        return done

    def install(self, values: Mapping[str, Any], timeout: float = 300) -> None:
        """``helm install`` (or upgrade) the chart into NAMESPACE and wait for its Deployments."""
        values_file = self.state_dir / "values.yaml"
        values_file.write_text(yaml.safe_dump(dict(values)))
        self.helm(
            "upgrade", "--install", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--create-namespace", "-f", str(values_file), "--wait", f"--timeout={int(timeout)}s",
        )  # fmt: skip
        self._record("info.json", release=RELEASE, namespace=NAMESPACE)

    # -- down --------------------------------------------------------------------------------

    def save_logs(self) -> None:
        """Every pod's log (current and previous container) into ``logs/pods/``, while the node
        still runs."""
        target = self.logs / "pods"
        done = self.kubectl("get", "pods", "-A", "-o", "json", check=False)
        if done.returncode != 0:
            return
        for pod in json.loads(done.stdout).get("items", []):
            meta = pod["metadata"]
            for container in pod["spec"].get("containers", []):
                for previous in (False, True):
                    args = ["logs", "-n", meta["namespace"], meta["name"], "-c", container["name"]]
                    log = self.kubectl(*args, *(["--previous"] if previous else []), check=False)
                    if log.returncode == 0 and log.stdout:
                        suffix = ".previous" if previous else ""
                        name = f"{meta['namespace']}_{meta['name']}_{container['name']}{suffix}.log"
                        target.mkdir(parents=True, exist_ok=True)
                        (target / name).write_text(log.stdout)

    def down(self) -> None:
        """Stop what this stack started and remove its state (the logs stay); safe to call
        repeatedly, after a partial start and from another process."""
        try:
            if self.control_plane.is_running():
                with contextlib.suppress(Exception):
                    self.save_logs()
            if self._own["node"]:
                self.the_node.stop()
            elif self.info.get("release") and self.control_plane.is_running():
                self.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
        finally:
            if self._own["plane"]:
                self.control_plane.stop()
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
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(KUBECTL), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
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

    def component_logs(self, component: str) -> str:
        """The log of the chart's ``operator`` or ``gateway`` pods (all of them, concatenated)."""
        done = self.kubectl(
            "logs", "-n", NAMESPACE, "-l", f"app.kubernetes.io/component={component}",
            "--tail=-1", "--prefix", check=False,
        )  # fmt: skip
        return done.stdout

    # -- the sample ----------------------------------------------------------------------------

    def seed(
        self,
        namespace: str,
        claim: str = SEED_CLAIM,
        timeout: float = 60,
        source: Path | None = None,
    ) -> Path:
        """Make the bundled GGUF (or ``source``) available on ``claim`` (created when missing);
        returns the file's path on this machine. The node's provisioner binds the claim to a
        directory of its own."""
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
corral is up. The gateway (every model, scale from zero) listens on {gateway}
(the NodePort of Service {NAMESPACE}/{RELEASE}-gateway, through kube-proxy):

  curl {gateway}/api/chat \\
    -d '{{"model": "{served}", "stream": false,
         "messages": [{{"role": "user", "content": "Hello!"}}]}}'
  curl {gateway}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{served}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

The ModelServer starts with zero replicas: the first request starts its pod and waits for it;
after keepAliveSeconds without requests it goes back to zero.

  export KUBECONFIG={stack.kubeconfig}
  {KUBECTL.relative_to(ROOT)} get models,modelservers,pods -A -o wide
  {KUBECTL.relative_to(ROOT)} logs -n {NAMESPACE} deploy/{RELEASE}-gateway

Logs of the control plane and the node: {stack.logs}/ and {stack.state_dir}/node/logs/.
Stop everything: make down
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=ROOT / ".stack")
    parser.add_argument("--port", type=int, default=11434, help="the gateway's port on 127.0.0.1")
    parser.add_argument("--namespace", default="default", help="where the sample goes")
    parser.add_argument("--gpus", type=int, default=2, help="fake nvidia.com/gpu on the node")
    args = parser.parse_args(argv)
    stack = Stack(args.dir, gpus=args.gpus)
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
        print("starting the control plane and the node, building the images…", flush=True)
        stack.up(gateway_port=args.port)
        print(f"helm release {RELEASE} installed in {NAMESPACE}", flush=True)
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


def free_node_port(low: int = 30000, high: int = 32767) -> int:
    """A port in the NodePort range that nothing on 127.0.0.1 listens on (for a gateway Service
    of a stack that should not take Ollama's port, e.g. a test's or a benchmark's)."""
    for port in random.sample(range(low, high + 1), 200):
        if _port_free(port):
            return port
    raise RuntimeError(f"no free port in {low}-{high}")
