"""corral's estimate of a ModelServer replica's memory against Ollama's published estimate, and
against what llama.cpp really allocates.

1. Shapes: GGUF files with the headers of Llama 3.1 8B and 70B (Q4_K_M; sparse files, the real
   tensor table and no weights) go through the pull Job's result (``corral pull``'s
   ``pull_result``) into a Model's status, and the operator's estimate for one GPU holding the
   whole model (``planners.sizing``: weights, KV cache, compute graph, CUDA overhead) is
   compared, at a few context lengths (one slot, batch 512, f16 cache), with Ollama's published
   method for a full offload to one CUDA GPU (llm/memory.go, EstimateGPULayers, and the llama
   graph size of fs/ggml GraphSize): the CUDA minimum (457 MiB), one layer with its share of the
   KV cache as a buffer, every layer with its share, the output norm and head, and the larger of
   the two full-offload graph terms. Written here from the method, not copied.
2. Real loads: the two small test models (gemma3:270m and qwen2.5-coder:0.5b, from their PyPI
   packages) are loaded by llama.cpp (corral's own context, in a child process, with llama.cpp's
   log on) at a few contexts and slot counts; the buffers it reports (model, KV cache, output,
   compute) are summed and compared with corral's estimate for the same shape on the CPU (the
   estimate must never be under what llama.cpp allocates).

Prints a line per shape and context with the ratio corral / Ollama, a line per real load with
the ratio estimate / allocated, and last ``sizing_max_abs_deviation_vs_ollama=<x>`` (goal <=
0.10).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from corral_operator.planners.sizing import (  # noqa: E402
    MIB,
    ModelFacts,
    ServingShape,
    estimate,
)
from corral_runtime.commands.models import pull_result  # noqa: E402
from corral_runtime.instructmodel import ensure_instruct_model  # noqa: E402
from corral_runtime.store.gguf import read_gguf_header, tensor_nbytes  # noqa: E402
from corral_runtime.store.layout import ModelStore  # noqa: E402
from corral_runtime.testmodel import ensure_test_model  # noqa: E402
from tests.support.gguf_shapes import LLAMA_31_8B, LLAMA_31_70B, write_sparse_gguf  # noqa: E402

CONTEXTS = (2048, 8192, 32768)
BATCH = 512
OLLAMA_CUDA_MINIMUM = 457 * MIB
LOADS = ((4096, 4), (2048, 1), (8192, 2))  # (context per slot, slots)


@dataclass(frozen=True)
class Layers:
    """What Ollama's method reads of the tensor table: each block's bytes, and the output's."""

    blocks: list[int]
    output: int


def layers_of(path: Path) -> Layers:
    with open(path, "rb") as f:
        header = read_gguf_header(f, path.stat().st_size)
    blocks: dict[int, int] = {}
    output = 0
    for tensor in header.tensors:
        if tensor.name.startswith("blk."):
            index = int(tensor.name.split(".")[1])
            blocks[index] = blocks.get(index, 0) + tensor_nbytes(tensor)
        elif tensor.name.split(".")[0] in ("output", "output_norm"):
            output += tensor_nbytes(tensor)
    return Layers([blocks[i] for i in sorted(blocks)], output)


def ollama_full_offload(facts: ModelFacts, layers: Layers, context: int) -> int:
    """Ollama's estimate of the VRAM a full offload to one CUDA GPU takes (f16 cache)."""
    kv = 2 * context * facts.block_count * (facts.key_length + facts.value_length) * facts.kv_heads
    kv_per_layer = kv // facts.block_count
    batch = min(context, BATCH)
    e, heads, vocab = facts.embedding_length, facts.head_count, facts.vocab_size
    graph = max(4 * batch * (1 + 4 * e + context * (1 + heads)), 4 * batch * (e + vocab))
    buffer = layers.blocks[0] + kv_per_layer
    repeating = sum(block + kv_per_layer for block in layers.blocks)
    return OLLAMA_CUDA_MINIMUM + buffer + repeating + layers.output + graph


def facts_of(doc: dict[str, object]) -> ModelFacts:
    facts = ModelFacts.from_status(doc)
    assert facts is not None, doc
    return facts


def compare_shapes(folder: Path) -> list[float]:
    deviations = []
    for shape in (LLAMA_31_8B, LLAMA_31_70B):
        path = write_sparse_gguf(folder / f"{shape.name}.gguf", shape)
        stored = _Stored(path)
        facts = facts_of(pull_result(stored))
        layers = layers_of(path)
        for context in CONTEXTS:
            ours = estimate(facts, ServingShape(context=context, parallel=1)).per_gpu_bytes(1)
            theirs = ollama_full_offload(facts, layers, context)
            ratio = ours / theirs
            deviations.append(abs(ratio - 1))
            print(
                f"{shape.name} Q4_K_M ctx={context}: corral {ours / 2**30:.2f} GiB, "
                f"ollama {theirs / 2**30:.2f} GiB, ratio={ratio:.3f}"
            )
        path.unlink()
    return deviations


class _Stored:
    """What ``pull_result`` reads of a stored model, for a file outside any store."""

    def __init__(self, path: Path) -> None:
        self.model_path = path
        self.size = path.stat().st_size
        self.model_digest = "sha256:" + path.name.encode().hex().ljust(64, "0")[:64]
        self.name = type("Name", (), {"display": path.stem})()


_PROBE = """
import sys
from pathlib import Path
from llama_cpp import _logger
from corral_runtime.engine.llama import ContextConfig, LlamaBatchContext
_logger.set_verbose(True)
LlamaBatchContext(ContextConfig(model_path=Path(sys.argv[1]), n_ctx=int(sys.argv[2]),
                                parallel=int(sys.argv[3]), n_batch=int(sys.argv[4])))
"""
_BUFFER = re.compile(r"buffer size =\s+([0-9.]+) MiB")


def allocated_bytes(path: Path, context: int, parallel: int) -> int:
    """What llama.cpp reports allocating to load ``path`` with that context: its buffers."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path), str(context), str(parallel), str(BATCH)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    sizes = [float(m) for m in _BUFFER.findall(out.stdout + out.stderr)]
    assert sizes, out.stderr[-2000:]
    return int(sum(sizes) * MIB)


def check_real_loads(folder: Path) -> bool:
    store = ModelStore(folder / "store")
    ok = True
    for stored in (ensure_test_model(store), ensure_instruct_model(store)):
        facts = facts_of(pull_result(stored))
        for context, parallel in LOADS:
            need = estimate(facts, ServingShape(context=context, parallel=parallel, n_batch=BATCH))
            allocated = allocated_bytes(stored.model_path, context, parallel)
            ratio = need.total_bytes / allocated
            ok = ok and ratio >= 1
            print(
                f"{stored.name.display} ctx={context} parallel={parallel}: estimate "
                f"{need.total_bytes / MIB:.0f} MiB, llama.cpp allocated {allocated / MIB:.0f} MiB, "
                f"ratio={ratio:.3f}{'' if ratio >= 1 else ' UNDER'}"
            )
    return ok


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        deviations = compare_shapes(folder)
        never_under = check_real_loads(folder)
    print(f"estimate_never_under_llama_cpp={str(never_under).lower()}")
    print(f"sizing_max_abs_deviation_vs_ollama={max(deviations):.3f}")
    return 0 if never_under else 1


if __name__ == "__main__":
    sys.exit(main())
