"""A cold start of ``corral serve``: from exec to ready, and to a first request's first token
beyond the model's own load time.

Each round launches a fresh ``corral serve`` of a private store holding the test model
(gemma3:270m) on a free loopback port, polls ``/readyz`` until it answers 200 (the time from
exec is ``runtime_start_to_ready``), then sends one streamed greedy ``/api/generate`` at once
and notes its first token (from exec). The server's own ``load_duration`` (its final chunk)
is the model's load; what a cold start costs beyond it is ``first_token_after_start_minus_load``:
imports, the bind, readiness, the request's own prefill and the first token. The blob is loaded
once before timing (a new blob's one-time probe is not part of a cold start of a pod whose pull
Job probed it).

Rounds alternate between four start-ups, all measured on the same machine in one run:
``preload`` (``--preload`` of the model, as a ModelServer's pods start: the engine starts
first, with llama-cpp-python's ctypes bindings alone, and the load overlaps the imports of the
web stack, numpy and llama-cpp-python's high-level half, and the bind), ``preload, web first``
(``CORRAL_EARLY_ENGINE_IMPORT=false`` with ``--preload``: the web stack is imported first and
the app's start-up starts the engine and the load, as before the engine came first), ``on first
request`` (the default of a local ``corral serve``: the model loads when the request asks) and
``import on first use`` (``CORRAL_EARLY_ENGINE_IMPORT=false`` without a preload: llama.cpp's
bindings imported in the app's start-up, numpy and the rest as the first load runs). The load
time is the server's own ``corral_model_load_seconds`` (a preloaded model's request reports no
load of its own). Each server also notes when its load begins (``LOAD_CALL_WATCH``), so each
round says what came before the load (``load call``, from exec). ``--against REV`` (repeatable)
also runs the ``preload`` start-up of the runtime as it was at git revision REV (its
``runtime/src`` first on ``PYTHONPATH``) in the same rounds, so old and new code meet the same
machine. Prints each round, the medians of each, and last ``runtime_start_to_ready_ms=<x>`` and
``first_token_after_start_minus_load_ms=<x>`` of the preload start-up, which is a pod's (goal:
the latter, on the local cluster, with the wake-up, <= 500).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # devstack and tests.support when run as a script

from corral_runtime.store.layout import ModelStore  # noqa: E402
from corral_runtime.testmodel import TEST_MODEL_NAME, ensure_test_model  # noqa: E402
from devstack.controlplane import free_port  # noqa: E402
from tests.support.serveproc import first_token_at, serve_command  # noqa: E402

POLL_SECONDS = 0.005
START_TIMEOUT_SECONDS = 120.0
PRELOAD_MODE = "preload"
# ``corral serve`` (its arguments after this script's) that writes the ``time.perf_counter()``
# (CLOCK_MONOTONIC, one clock for every process on Linux) at which the engine's first
# LlamaBatchContext is made, the load (llama.cpp's load call follows within milliseconds), to
# the file LOAD_CALL_FILE names. The module is imported before the load whatever the start-up.
LOAD_CALL_WATCH = """
import os, sys, time
from corral_runtime.cli import main
from corral_runtime.engine import llama

make_context = llama.LlamaBatchContext.__init__


def noted_init(self, config):
    if not os.path.exists(os.environ["LOAD_CALL_FILE"]):
        with open(os.environ["LOAD_CALL_FILE"], "w") as f:
            f.write(repr(time.perf_counter()))
    make_context(self, config)


llama.LlamaBatchContext.__init__ = noted_init
sys.exit(main(sys.argv[1:]))
"""


@dataclass(frozen=True, slots=True)
class StartUp:
    """A way to start the server: CORRAL_EARLY_ENGINE_IMPORT, whether the model is preloaded,
    and the runtime's sources put first on the path (None: the installed runtime's)."""

    early_import: str
    preload: bool
    code: Path | None = None


@dataclass(frozen=True, slots=True)
class ColdStart:
    load_call_ms: float  # exec to llama.cpp's first load call
    ready_ms: float  # exec to the first /readyz 200
    first_token_ms: float  # exec to the first token of the first request
    load_ms: float  # the server's own load_duration for that request

    @property
    def beyond_load_ms(self) -> float:
        return self.first_token_ms - self.load_ms


# The start-ups every round runs (see the module docstring).
MODES = {
    "preload": StartUp("true", preload=True),
    "preload, web first": StartUp("false", preload=True),
    "on first request": StartUp("true", preload=False),
    "import on first use": StartUp("false", preload=False),
}


def wait_ready(base: str, process: subprocess.Popen[bytes], started: float) -> float:
    """Milliseconds from ``started`` to the first ``/readyz`` 200."""
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                if client.get(base + "/readyz").status_code == 200:
                    return (time.perf_counter() - started) * 1000
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.perf_counter() - started > START_TIMEOUT_SECONDS:
                raise RuntimeError("corral serve did not become ready")
            time.sleep(POLL_SECONDS)


def first_request(base: str, model: str, started: float) -> float:
    """A streamed greedy generate: milliseconds from ``started`` to its first token."""
    return (first_token_at(base, model, "Name three colours.", 4) - started) * 1000


def load_ms(base: str) -> float:
    """The server's own model load time (the sum of ``corral_model_load_seconds``), whether a
    preload or the request loaded it."""
    text = httpx.get(base + "/metrics", timeout=10).text
    sums = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("corral_model_load_seconds_sum")
    ]
    if not sums:
        raise RuntimeError("the server reports no model load")
    return sum(sums) * 1000


def cold_start(models: Path, model: str, start: StartUp, log: Path) -> ColdStart:
    """One fresh ``corral serve``, timed from exec (see the module docstring)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = serve_command(
        port, models, "--log-level", "warning", *(("--preload", model) if start.preload else ())
    )
    command = [sys.executable, "-c", LOAD_CALL_WATCH, *serve[serve.index("serve") :]]
    load_call = log.with_name("load-call")
    load_call.unlink(missing_ok=True)
    env = {
        **os.environ,
        "CORRAL_EARLY_ENGINE_IMPORT": start.early_import,
        "LOAD_CALL_FILE": str(load_call),
    }
    if start.code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(start.code), env.get("PYTHONPATH", "")])
    with log.open("ab") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            ready = wait_ready(base, process, started)
            first = first_request(base, model, started)
            load = load_ms(base)
        finally:
            process.terminate()
            process.wait(timeout=60)
    called = (float(load_call.read_text()) - started) * 1000
    return ColdStart(load_call_ms=called, ready_ms=ready, first_token_ms=first, load_ms=load)


def runtime_at(revision: str, root: Path) -> Path:
    """The runtime's sources as they were at git ``revision``, under ``root``: the directory to
    put first on ``PYTHONPATH``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, "runtime/src"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    return root / "runtime" / "src"


def private_store(root: Path) -> ModelStore:
    """The test model in a store of its own, its blob a file of its own: a blob linked from
    elsewhere changes ctime whenever another store links it, and the server then probes it
    again (see bench/multimodel.py)."""
    store = ModelStore(root)
    ensure_test_model(store)
    for blob in (root / "blobs").iterdir():
        copy = blob.with_name(blob.name + ".copy")
        shutil.copyfile(blob, copy)
        copy.replace(blob)
    return store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="cold starts per mode")
    parser.add_argument(
        "--against",
        metavar="REV",
        action="append",
        default=[],
        help="also the preload start-up of the runtime at git revision REV (repeatable)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-coldstart-") as tmp:
        root = Path(tmp)
        private_store(root / "models")
        log = root / "serve.log"
        modes = dict(MODES)
        for revision in args.against:
            code = runtime_at(revision, root / "code" / revision.replace("/", "_"))
            modes[f"{PRELOAD_MODE} @{revision}"] = StartUp("true", preload=True, code=code)
        # The blob's one-time probe.
        cold_start(root / "models", TEST_MODEL_NAME, MODES["on first request"], log)
        results: dict[str, list[ColdStart]] = {mode: [] for mode in modes}
        for round_ in range(args.rounds):
            for mode, start in modes.items():
                result = cold_start(root / "models", TEST_MODEL_NAME, start, log)
                results[mode].append(result)
                print(
                    f"round {round_ + 1} {mode}: load call {result.load_call_ms:.0f} ms, "
                    f"ready {result.ready_ms:.0f} ms, first token "
                    f"{result.first_token_ms:.0f} ms, load {result.load_ms:.0f} ms, beyond "
                    f"load {result.beyond_load_ms:.0f} ms",
                    flush=True,
                )
    for mode, runs in results.items():
        print(
            f"{mode}: median load call {statistics.median(r.load_call_ms for r in runs):.0f} ms, "
            f"ready {statistics.median(r.ready_ms for r in runs):.0f} ms, "
            f"first token beyond load {statistics.median(r.beyond_load_ms for r in runs):.0f} "
            f"ms, load {statistics.median(r.load_ms for r in runs):.0f} ms"
        )
    default = results[PRELOAD_MODE]
    print(f"runtime_start_to_ready_ms={statistics.median(r.ready_ms for r in default):.0f}")
    print(
        "first_token_after_start_minus_load_ms="
        f"{statistics.median(r.beyond_load_ms for r in default):.0f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
