"""Loading a model file in a child process first, so that one llama.cpp dies on is refused instead.

``check_model_file`` refuses the malformed files known to abort llama.cpp (a ``GGML_ASSERT`` or an
uncaught C++ exception ends the whole process, server included), but llama.cpp's loader has
more rules per architecture than a validator can mirror. So before the server loads a blob for
the first time, a child process (``python -m corral_runtime.engine.probe FILE``) loads it the same
way on the CPU (weights memory-mapped, no context) and runs its tokenizer over every byte value;
a child that dies or fails makes the file ``InvalidModelFileError`` for the server, which stays
up. A success is recorded with the store's blob records (``ModelStore.mark``), so each blob is
probed once, not at every load or restart. The child runs in a process group of its own, which is
killed (and the child reaped) when the load that asked for it is abandoned or it runs too long.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from corral_runtime.engine.bindings import import_bindings
from corral_runtime.store.digests import StopCheck
from corral_runtime.store.gguf import InvalidModelFileError
from corral_runtime.store.layout import LOADS, ModelStore, StoredModel

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 300.0
# How often a running child's parent asks whether to stop it (an abandoned load).
POLL_SECONDS = 0.05
# Every byte value, and text with multi-byte characters: what a tokenizer falls back on.
SAMPLE = bytes(range(1, 256)) + "héllo wörld ✓ 你好".encode()


def probe_model(store: ModelStore, stored: StoredModel, stop: StopCheck | None = None) -> None:
    """Make sure llama.cpp can load the model's blob without dying (once per blob). ``stop``
    is asked while the child runs: what it raises kills the child, and nothing is marked."""
    digest = stored.model_digest
    if store.is_marked(digest, LOADS):
        return
    probe_model_file(stored.model_path, stop=stop)
    store.mark(digest, LOADS)


def probe_command(path: Path) -> list[str]:
    """The child's command line (a module-level name, so a test's server can start a slow
    child in its place)."""
    return [sys.executable, "-m", __name__, str(path)]


def probe_model_file(
    path: Path, timeout: float = PROBE_TIMEOUT_SECONDS, stop: StopCheck | None = None
) -> None:
    """Load ``path`` in a child process; InvalidModelFileError when it dies or cannot load it."""
    try:
        returncode, stderr = run_child(probe_command(path), timeout, stop)
    except subprocess.TimeoutExpired as exc:
        raise InvalidModelFileError("llama.cpp did not finish loading it") from exc
    if returncode == 0:
        return
    lines = stderr.decode(errors="replace").strip().splitlines()
    said = [line for line in lines if "error" in line.lower() or "what()" in line] or lines[-1:]
    log.warning("model probe exited with %d: %s", returncode, " | ".join(said[:3]))
    if returncode < 0 or returncode == 128 + signal.SIGABRT:
        raise InvalidModelFileError("llama.cpp aborted while loading it")
    raise InvalidModelFileError("llama.cpp cannot load it")


def run_child(
    command: Sequence[str], timeout: float, stop: StopCheck | None = None
) -> tuple[int, bytes]:
    """Run ``command`` to its end in a process group of its own: its exit status and stderr.

    ``stop`` is asked every ``POLL_SECONDS``. When it raises, or ``timeout`` passes
    (``subprocess.TimeoutExpired``), the whole group is killed and the child reaped before that
    goes on up: a load abandoned at shutdown leaves no child behind loading a large model.
    """
    deadline = time.monotonic() + timeout
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    ) as child:
        try:
            while True:
                if stop is not None:
                    stop()
                wait = min(POLL_SECONDS, max(0.0, deadline - time.monotonic()))
                try:
                    _, stderr = child.communicate(timeout=wait)
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        raise
                    continue
                return child.returncode, stderr
        finally:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
                child.communicate()  # reaps it


def _load_and_tokenize(path: str) -> int:
    import_bindings()  # all it calls: not numpy and the high-level half (~0.2 s) too
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    # Weights stay in the file's mapping: repacking them for the CPU's kernels would copy a large
    # model into memory (a GPU pod's memory limit is not sized for that).
    params.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    if not model:
        return 1
    vocab = llama_cpp.llama_model_get_vocab(model)
    tokens = (llama_cpp.llama_token * (len(SAMPLE) * 4))()
    count = llama_cpp.llama_tokenize(vocab, SAMPLE, len(SAMPLE), tokens, len(tokens), True, True)
    piece = ctypes.create_string_buffer(256)
    for token in tokens[: max(count, 0)]:
        llama_cpp.llama_token_to_piece(vocab, token, piece, len(piece), 0, True)
    llama_cpp.llama_model_free(model)
    return 0 if count >= 0 else 1


if __name__ == "__main__":
    # The child stays off any GPU (only the file's structure is in question here): hidden from
    # it before llama.cpp starts.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    os.environ["HIP_VISIBLE_DEVICES"] = ""
    sys.exit(_load_and_tokenize(sys.argv[1]))
