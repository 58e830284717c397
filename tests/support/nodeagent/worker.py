"""One thread per pod: sets up its namespace and volumes, runs its containers as processes,
probes them, restarts them as the restart policy says, and writes the pod's status."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from kubernetes.client.exceptions import ApiException

from .decisions import (
    ProbeTracker,
    backoff_seconds,
    crashes_after_run,
    init_should_restart,
    should_restart,
)
from .imagemap import ImageMap, container_argv
from .kube import MERGE_PATCH, Lookups
from .network import NetworkError, NodeNetwork, PodNetwork
from .podspec import (
    TERMINATION_MESSAGE_LIMIT,
    ConfigError,
    UnsupportedError,
    VolumePlan,
    bind_command,
    container_env,
    expand,
    kubernetes_service_env,
    mount_plan,
    plan_volumes,
    rewrite_path,
    termination_path,
)
from .probes import run_probe
from .status import ContainerView, Terminated, pod_status

log = logging.getLogger("nodeagent.worker")
TICK_SECONDS = 0.3
CANNOT_RUN_EXIT = 128


@dataclass
class NodeContext:
    """What every pod worker of one node shares."""

    node: str
    network: NodeNetwork
    image_map: ImageMap
    lookups: Lookups
    core: Any  # kubernetes.client.CoreV1Api
    pods_dir: Path
    backoff_base: float
    allocatable: Mapping[str, str]


@dataclass
class Container:
    """The live record of one container of the pod."""

    spec: dict[str, Any]
    init: bool
    proc: subprocess.Popen[bytes] | None = None
    started_at: datetime | None = None
    started_mono: float = 0.0
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    restart_count: int = 0
    ever_started: bool = False
    crashes: int = 0
    next_start: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    # What exec probes run behind, to see the container's mounts: [] or a bind_command prefix.
    mounts_prefix: list[str] = field(default_factory=list)
    readiness: ProbeTracker | None = None
    liveness: ProbeTracker | None = None
    startup: ProbeTracker | None = None
    ready: bool = False
    started: bool = False

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def view(self) -> ContainerView:
        running = self.started_at if self.proc is not None else None
        return ContainerView(
            name=self.name,
            image=str(self.spec.get("image", "")),
            running_since=running,
            terminated=self.terminated if running is None else None,
            waiting_reason=self.waiting_reason,
            waiting_message=self.waiting_message,
            last_terminated=self.last_terminated,
            restart_count=self.restart_count,
            ready=self.ready and running is not None,
            started=self.started and running is not None,
        )


class PodWorker(threading.Thread):
    def __init__(self, pod: dict[str, Any], ctx: NodeContext) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.pod = pod
        self.ctx = ctx
        self.uid: str = meta["uid"]
        self.dir = ctx.pods_dir / f"{meta['namespace']}_{meta['name']}_{self.uid[:8]}"
        spec = pod["spec"]
        self.policy: str = spec.get("restartPolicy", "Always")
        self.inits = [Container(dict(c), init=True) for c in spec.get("initContainers") or []]
        self.containers = [Container(dict(c), init=False) for c in spec.get("containers") or []]
        self.net: PodNetwork | None = None
        self.volumes: dict[str, Path] | None = None
        self.start_time = datetime.now(UTC)
        self.published: dict[str, Any] | None = None
        self.stop_requested = threading.Event()
        self.stopped = threading.Event()
        self.grace: float | None = None

    @property
    def ref(self) -> str:
        """``namespace/name`` of the pod."""
        meta = self.pod["metadata"]
        return f"{meta['namespace']}/{meta['name']}"

    # -- control from the node's sync loop --------------------------------------------------------

    def request_stop(self, grace: float | None = None) -> None:
        self.grace = grace
        self.stop_requested.set()

    def termination_grace(self) -> float:
        if self.grace is not None:
            return self.grace
        meta, spec = self.pod["metadata"], self.pod["spec"]
        value = meta.get("deletionGracePeriodSeconds")
        if value is None:
            value = spec.get("terminationGracePeriodSeconds", 30)
        return float(value)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        terminal = False
        try:
            while not self.stop_requested.is_set():
                self.tick()
                terminal = self.publish() in ("Succeeded", "Failed")
                if terminal:
                    break
                self.stop_requested.wait(TICK_SECONDS)
        except Exception:
            log.exception("pod worker %s failed", self.name)
        finally:
            self.stop_all(self.termination_grace())
            if not terminal and not self.stop_requested.is_set():
                self.publish()
            self.teardown()
            self.stopped.set()

    def tick(self) -> None:
        if self.net is None:
            try:
                self.net = self.ctx.network.add_pod()
            except NetworkError as error:
                self.wait_all("ContainerCreating", str(error))
                return
        if self.volumes is None and not self.prepare_volumes():
            return
        for container in self.inits:
            if container.terminated is not None and container.terminated.exit_code == 0:
                continue
            self.tick_container(container)
            return
        for container in self.containers:
            self.tick_container(container)

    def wait_all(self, reason: str, message: str) -> None:
        for container in [*self.inits, *self.containers]:
            if container.proc is None and container.terminated is None:
                container.waiting_reason, container.waiting_message = reason, message

    def prepare_volumes(self) -> bool:
        try:
            if self.pod["spec"].get("hostNetwork"):
                raise UnsupportedError("hostNetwork pods are not supported by the node agent")
            plans = plan_volumes(
                self.pod, self.dir, self.ctx.lookups.data, self.ctx.lookups.claim_dir
            )
        except ConfigError as error:
            self.wait_all("CreateContainerConfigError", str(error))
            return False
        except UnsupportedError as error:
            # Nothing can ever start: every container fails the way a runtime would report it.
            for container in [*self.inits, *self.containers]:
                if container.terminated is None and container.proc is None:
                    self.cannot_run(container, str(error))
            return False
        self.volumes = {plan.name: write_volume(plan) for plan in plans}
        return True

    # -- one container ---------------------------------------------------------------------------

    def tick_container(self, container: Container) -> None:
        now = time.monotonic()
        if container.proc is not None:
            code = container.proc.poll()
            if code is not None:
                self.exited(container, code, "", self.termination_message(container))
            else:
                self.probe(container, now)
            return
        if container.terminated is not None or now < container.next_start:
            return
        self.start_container(container)

    def start_container(self, container: Container) -> None:
        assert self.net is not None and self.volumes is not None
        spec = container.spec
        image = str(spec.get("image", ""))
        entry = self.ctx.image_map.resolve(image)
        if entry is None:
            self.cannot_run(
                container,
                f"image {image!r} is not in the node agent's image map "
                f"({self.ctx.image_map.source})",
            )
            return
        try:
            own_env = container_env(
                self.pod,
                spec,
                self.ctx.lookups.data,
                self.net.pod_ip,
                self.ctx.network.host_ip,
                self.ctx.allocatable,
            )
            plan = mount_plan(spec, self.volumes, hides_nothing)
        except ConfigError as error:
            container.waiting_reason = "CreateContainerConfigError"
            container.waiting_message = str(error)
            container.next_start = time.monotonic() + 1.0
            return
        except UnsupportedError as error:
            self.cannot_run(container, str(error))
            return
        # terminationMessagePath is a file of the container's own: a private file here, named
        # by that path in args and env (as mounts are), read back when the container exits.
        message_file = self.termination_file(container)
        message_file.parent.mkdir(parents=True, exist_ok=True)
        message_file.write_bytes(b"")
        mounts = [(termination_path(spec), message_file), *plan.rewrites]
        own_env = {k: rewrite_path(v, mounts) for k, v in own_env.items()}
        argv = [
            rewrite_path(expand(a, own_env), mounts)
            for a in container_argv(entry, spec.get("command"), spec.get("args"))
        ]
        # The `kubernetes` Service as kube-proxy would route it: straight to the API server.
        endpoint = self.ctx.lookups.api_endpoint()
        service_env = kubernetes_service_env(*endpoint) if endpoint else {}
        env = {
            **os.environ,
            **entry.env,
            **service_env,
            "HOSTNAME": self.pod["metadata"]["name"],
            **own_env,
        }
        env.pop("KUBECONFIG", None)
        # Paths the container names, and where they are on this machine (behind a bind).
        bound = [(bind.mount_path, bind.local) for bind in plan.binds]
        workdir = spec.get("workingDir") or entry.working_dir
        inner_cwd = rewrite_path(workdir, mounts) if workdir else str(self.dir / "root")
        cwd = Path(rewrite_path(inner_cwd, bound))
        if not workdir:
            cwd.mkdir(parents=True, exist_ok=True)
        found = shutil.which(rewrite_path(argv[0], bound), path=env.get("PATH"))
        executable = argv[0] if found and rewrite_path(argv[0], bound) != argv[0] else found
        if executable is None:
            self.cannot_run(container, f"executable {argv[0]!r} (image {image!r}) not found")
            return
        if not cwd.is_dir():
            self.cannot_run(container, f"workingDir {str(cwd)!r} does not exist on this machine")
            return
        unshare = shutil.which("unshare") or "unshare"
        command = bind_command(plan.binds, inner_cwd, [executable, *argv[1:]], unshare)
        log_path = self.dir / "logs" / f"{container.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            _banner(log_file, f"start {argv} in {self.net.netns}")
            container.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.net.netns, *command],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if container.ever_started:
            container.restart_count += 1
        container.ever_started = True
        container.env = env
        container.mounts_prefix = bind_command(plan.binds, inner_cwd, [], unshare)
        container.started_at = datetime.now(UTC)
        container.started_mono = time.monotonic()
        container.terminated = None
        container.waiting_reason, container.waiting_message = "ContainerCreating", ""
        now = container.started_mono
        container.readiness = _tracker(spec.get("readinessProbe"), now, healthy=False)
        container.liveness = _tracker(spec.get("livenessProbe"), now, healthy=True)
        container.startup = _tracker(spec.get("startupProbe"), now, healthy=False)
        container.started = container.startup is None
        container.ready = container.readiness is None and not container.init
        log.info("%s: started %s (pid %d)", self.name, container.name, container.proc.pid)

    def termination_file(self, container: Container) -> Path:
        return self.dir / "termination" / container.name

    def termination_message(self, container: Container) -> str:
        """What the container wrote to its terminationMessagePath (at most 4 KiB, as kubelet)."""
        try:
            with open(self.termination_file(container), "rb") as f:
                return f.read(TERMINATION_MESSAGE_LIMIT).decode(errors="replace")
        except OSError:
            return ""

    def probe(self, container: Container, now: float) -> None:
        assert self.net is not None
        spec = container.spec
        prefix = ["ip", "netns", "exec", self.net.netns, *container.mounts_prefix]

        def check(tracker: ProbeTracker, probe: Mapping[str, Any]) -> None:
            if tracker.due(now):
                ok = run_probe(
                    probe,
                    spec,
                    self.net.pod_ip if self.net else "",
                    prefix,
                    container.env,
                    tracker.timeout,
                )
                tracker.record(ok, time.monotonic())

        if container.startup is not None and not container.started:
            check(container.startup, spec["startupProbe"])
            if container.startup.healthy:
                container.started = True
            elif container.startup.failures >= container.startup.failure_threshold:
                self.kill(container, "startup probe failed")
            return
        if container.liveness is not None:
            check(container.liveness, spec["livenessProbe"])
            if not container.liveness.healthy:
                self.kill(container, "liveness probe failed")
                return
        if container.readiness is not None:
            check(container.readiness, spec["readinessProbe"])
            container.ready = container.readiness.healthy

    def kill(self, container: Container, why: str) -> None:
        log.info("%s: %s: %s, restarting", self.name, container.name, why)
        code = stop_process(container.proc, self.termination_grace()) if container.proc else 137
        self.exited(container, code, "Error", f"Container {container.name} {why}")

    def cannot_run(self, container: Container, message: str) -> None:
        log.warning("%s: %s cannot run: %s", self.name, container.name, message)
        now = datetime.now(UTC)
        if container.ever_started:
            container.restart_count += 1
        container.ever_started = True
        container.started_at, container.started_mono = now, time.monotonic()
        self.exited(container, CANNOT_RUN_EXIT, "ContainerCannotRun", message)

    def exited(self, container: Container, code: int, reason: str, message: str) -> None:
        exit_code = code if code >= 0 else 128 - code
        now = datetime.now(UTC)
        ran = time.monotonic() - container.started_mono
        term = Terminated(
            exit_code=exit_code,
            reason=reason or ("Completed" if exit_code == 0 else "Error"),
            message=message,
            started_at=container.started_at or now,
            finished_at=now,
        )
        container.proc = None
        container.ready = container.started = False
        restart = (init_should_restart if container.init else should_restart)(
            self.policy, exit_code
        )
        if restart and not self.stop_requested.is_set():
            container.crashes = crashes_after_run(container.crashes, ran, self.ctx.backoff_base)
            delay = backoff_seconds(container.crashes, self.ctx.backoff_base)
            container.last_terminated = term
            container.terminated = None
            container.waiting_reason = "CrashLoopBackOff"
            container.waiting_message = (
                f"back-off {delay:g}s restarting failed container={container.name} pod={self.ref}"
            )
            container.next_start = time.monotonic() + delay
        else:
            if container.terminated is not None:
                container.last_terminated = container.terminated
            container.terminated = term
        log.info("%s: %s exited with %d", self.name, container.name, exit_code)

    # -- status and teardown -----------------------------------------------------------------

    def publish(self) -> str:
        """Write the pod's status when it changed; returns the phase."""
        status = pod_status(
            self.pod,
            [c.view() for c in self.inits],
            [c.view() for c in self.containers],
            self.net.pod_ip if self.net else "",
            self.ctx.network.host_ip,
            self.start_time,
            previous=self.published or self.pod.get("status"),
        )
        if status != self.published:
            meta = self.pod["metadata"]
            try:
                self.ctx.core.patch_namespaced_pod_status(
                    meta["name"],
                    meta["namespace"],
                    {"status": status},
                    _content_type=MERGE_PATCH,
                    _preload_content=False,
                )
                self.published = status
            except ApiException as error:
                if error.status != 404:
                    log.warning("%s: status update failed: %s", self.name, error.reason)
        return str(status["phase"])

    def stop_all(self, grace: float) -> None:
        running = [c for c in [*self.inits, *self.containers] if c.proc is not None]
        for container in running:
            assert container.proc is not None
            _signal_group(container.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for container in running:
            assert container.proc is not None
            code = stop_process(container.proc, max(0.0, deadline - time.monotonic()))
            self.exited(container, code, "", "")

    def teardown(self) -> None:
        if self.net is not None:
            self.ctx.network.remove_pod(self.net)
            self.net = None

    def remove_files(self) -> None:
        """Drop the pod's own volumes and scratch directory; its logs stay for inspection."""
        shutil.rmtree(self.dir / "volumes", ignore_errors=True)
        shutil.rmtree(self.dir / "root", ignore_errors=True)


def _tracker(probe: Mapping[str, Any] | None, now: float, healthy: bool) -> ProbeTracker | None:
    return ProbeTracker.from_spec(probe, now, healthy) if probe else None


def _banner(log_file: IO[bytes], text: str) -> None:
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    log_file.write(f"--- {stamp} node agent: {text}\n".encode())
    log_file.flush()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds; returns the exit status."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    _signal_group(proc, signal.SIGKILL)  # also reaps children left in the group
    return proc.wait()


def hides_nothing(mount_path: str, local: Path) -> bool:
    """Whether a directory volume may be bind-mounted at ``mount_path``: nothing is there on
    this machine, or an empty directory (a mountpoint made for an earlier container)."""
    if not local.is_dir():
        return False
    target = Path(mount_path)
    try:
        return not target.exists() or (target.is_dir() and next(target.iterdir(), None) is None)
    except OSError:
        return False


def write_volume(plan: VolumePlan) -> Path:
    plan.path.mkdir(parents=True, exist_ok=True)
    for relative, content in plan.files.items():
        target = plan.path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return plan.path
