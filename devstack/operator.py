"""corral's operator as a process on this machine, against any cluster a kubeconfig names (the
local one of ``devstack``, or another): for developing the operator without building its image,
for the operator's cluster tests and for ``bench/operator.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devstack.controlplane import free_port
from devstack.poll import wait_for


def terminate(proc: subprocess.Popen[Any], grace: float, reap: float) -> None:
    """SIGTERM a process, SIGKILL it after ``grace`` seconds, wait ``reap`` for the end."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(reap)


class Operator:
    """``corral-operator`` in a subprocess, watching one namespace."""

    def __init__(
        self, kubeconfig: Path, namespace: str, log_dir: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.kubeconfig, self.namespace, self.log_dir = kubeconfig, namespace, log_dir
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        port = free_port()
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "CORRAL_OPERATOR_NAMESPACES": self.namespace,
            "CORRAL_OPERATOR_LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz",
            **self.env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corral_operator.main"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited: {self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for("the operator's liveness endpoint", healthy, 30)

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=15, reap=5)

    def kill(self) -> None:
        """Stop abruptly, as a crashed or evicted operator would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log"))
        )
