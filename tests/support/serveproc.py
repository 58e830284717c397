"""``corral serve`` (and the gateway) as a separate process on loopback, for tests and benches that
must see a crash or send a signal.

The runtime tier's ``serve()`` fixture runs uvicorn in a thread inside pytest: an input that
aborts the process (a llama.cpp ``GGML_ASSERT``) would take pytest down with it. Here the server
is its own process, so an abort shows as ``ServedProcess.alive() is False`` (with the tail of its
log) instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from devstack.controlplane import free_port


@dataclass(frozen=True, slots=True)
class ServedProcess:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def wait_draining(base_url: str, timeout: float = 10) -> httpx.Response:
    """The first ``/readyz`` answer that is not 200 (the server saw SIGTERM), or the last 200
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.get(base_url + "/readyz", timeout=5)
        if answer.status_code != 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def serve_command(port: int, models: Path, *args: str) -> list[str]:
    """``corral serve --models MODELS ARGS…`` on 127.0.0.1:``port``, as this interpreter runs it."""
    return [
        sys.executable,
        "-m",
        "corral_runtime.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--models",
        str(models),
        *args,
    ]


@contextmanager
def serving_process(
    models: Path,
    *args: str,
    log: Path,
    env: dict[str, str] | None = None,
    start_timeout: float = 60,
) -> Iterator[ServedProcess]:
    """``corral serve --models MODELS ARGS…`` on a free loopback port, until the block ends.

    Waits for ``/healthz``; the server's output goes to ``log``. On exit the server gets SIGTERM
    (then SIGKILL after 30 s).
    """
    port = free_port()
    command = serve_command(port, models, *args)
    with running_process("corral serve", command, port, log, env or {}, start_timeout) as s:
        yield s


@contextmanager
def gateway_process(
    env: dict[str, str], *, log: Path, start_timeout: float = 60
) -> Iterator[ServedProcess]:
    """The gateway (``python -m corral_operator.gateway``) on a free loopback port, with its
    ``CORRAL_GATEWAY_*`` settings in ``env``; waits for ``/healthz`` and stops as above."""
    port = free_port()
    command = [sys.executable, "-m", "corral_operator.gateway"]
    bound = {"CORRAL_GATEWAY_HOST": "127.0.0.1", "CORRAL_GATEWAY_PORT": str(port)}
    with running_process("the gateway", command, port, log, {**env, **bound}, start_timeout) as s:
        yield s


@contextmanager
def running_process(
    name: str,
    command: list[str],
    port: int,
    log: Path,
    env: dict[str, str],
    start_timeout: float,
    ready_path: str = "/healthz",
) -> Iterator[ServedProcess]:
    """``command`` (called ``name`` in errors), serving HTTP on 127.0.0.1:``port``, until the
    block ends; started once ``ready_path`` answers 200."""
    base = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
        served = ServedProcess(base, process, log)
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                try:
                    if httpx.get(base + ready_path, timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    out.flush()
                    raise RuntimeError(f"{name} did not start:\n{served.log_tail()}")
                time.sleep(0.1)
            yield served
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def first_token_at(base_url: str, model: str, prompt: str, tokens: int) -> float:
    """Send one streamed greedy ``/api/generate``; the ``time.perf_counter()`` at which its first
    token arrived (the stream is then read to its end, so the server is idle again)."""
    body = {
        "model": model,
        "prompt": prompt,
        "stream": True,
        "options": {"temperature": 0, "num_predict": tokens},
    }
    first: float | None = None
    with httpx.stream("POST", f"{base_url}/api/generate", json=body, timeout=600) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            chunk = json.loads(line)
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if first is None and chunk.get("response"):
                first = time.perf_counter()
    if first is None:
        raise RuntimeError(f"{model} answered no token")
    return first
