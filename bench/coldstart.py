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
load of its own). Prints each round, the medians of each, and last ``runtime_start_to_ready_ms=<x>``
and ``first_token_after_start_minus_load_ms=<x>`` of the preload start-up, which is a pod's
(goal: the latter, on the local cluster, with the wake-up, <= 500).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
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
# Each start-up: CORRAL_EARLY_ENGINE_IMPORT and whether the model is preloaded.
MODES = {
    "preload": ("true", True),
    "preload, web first": ("false", True),
    "on first request": ("true", False),
    "import on first use": ("false", False),
}
PRELOAD_MODE = "preload"


@dataclass(frozen=True, slots=True)
class ColdStart:
    ready_ms: float  # exec to the first /readyz 200
    first_token_ms: float  # exec to the first token of the first request
    load_ms: float  # the server's own load_duration for that request

    @property
    def beyond_load_ms(self) -> float:
        return self.first_token_ms - self.load_ms


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


def cold_start(
    models: Path, model: str, early_import: str, log: Path, *, preload: bool = False
) -> ColdStart:
    """One fresh ``corral serve``, timed from exec (see the module docstring)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = serve_command(
        port, models, "--log-level", "warning", *(("--preload", model) if preload else ())
    )
    env = {**os.environ, "CORRAL_EARLY_ENGINE_IMPORT": early_import}
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
    return ColdStart(ready_ms=ready, first_token_ms=first, load_ms=load)


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="corral-coldstart-") as tmp:
        root = Path(tmp)
        private_store(root / "models")
        log = root / "serve.log"
        cold_start(root / "models", TEST_MODEL_NAME, "true", log)  # the blob's one-time probe
        results: dict[str, list[ColdStart]] = {mode: [] for mode in MODES}
        for round_ in range(args.rounds):
            for mode, (switch, preload) in MODES.items():
                result = cold_start(root / "models", TEST_MODEL_NAME, switch, log, preload=preload)
                results[mode].append(result)
                print(
                    f"round {round_ + 1} {mode}: ready {result.ready_ms:.0f} ms, first token "
                    f"{result.first_token_ms:.0f} ms, load {result.load_ms:.0f} ms, beyond "
                    f"load {result.beyond_load_ms:.0f} ms",
                    flush=True,
                )
    for mode, runs in results.items():
        print(
            f"{mode}: median ready {statistics.median(r.ready_ms for r in runs):.0f} ms, "
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
