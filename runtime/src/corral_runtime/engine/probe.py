"""Loading a model file in a child process first, so that one llama.cpp dies on is refused instead.

``check_model_file`` refuses the malformed files known to abort llama.cpp (a ``GGML_ASSERT`` or an
uncaught C++ exception ends the whole process, server included), but llama.cpp's loader has
more rules per architecture than a validator can mirror. So before the server loads a blob for
the first time, a child process (``python -m corral_runtime.engine.probe FILE``) loads it the same
way on the CPU (weights memory-mapped, no context) and runs its tokenizer over every byte value;
a child that dies or fails makes the file ``InvalidModelFileError`` for the server, which stays
up. A success is recorded with the store's blob records (``ModelStore.mark``), so each blob is
probed once, not at every load or restart.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from corral_runtime.engine.bindings import import_bindings
from corral_runtime.store.gguf import InvalidModelFileError
from corral_runtime.store.layout import LOADS, ModelStore, StoredModel

log = logging.getLogger(__name__)

PROBE_TIMEOUT_SECONDS = 300.0
# Every byte value, and text with multi-byte characters: what a tokenizer falls back on.
SAMPLE = bytes(range(1, 256)) + "héllo wörld ✓ 你好".encode()


def probe_model(store: ModelStore, stored: StoredModel) -> None:
    """Make sure llama.cpp can load the model's blob without dying (once per blob)."""
    digest = stored.model_digest
    if store.is_marked(digest, LOADS):
        return
    probe_model_file(stored.model_path)
    store.mark(digest, LOADS)


def probe_model_file(path: Path, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
    """Load ``path`` in a child process; InvalidModelFileError when it dies or cannot load it."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", __name__, str(path)],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidModelFileError("llama.cpp did not finish loading it") from exc
    if result.returncode == 0:
        return
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    said = [line for line in lines if "error" in line.lower() or "what()" in line] or lines[-1:]
    log.warning("model probe exited with %d: %s", result.returncode, " | ".join(said[:3]))
    if result.returncode < 0 or result.returncode == 128 + signal.SIGABRT:
        raise InvalidModelFileError("llama.cpp aborted while loading it")
    raise InvalidModelFileError("llama.cpp cannot load it")


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
