"""Where the two packages meet over a model's size: the pull Job's result for a GGUF with the
headers of Llama 3.1 8B and 70B (sparse files: the real header and tensor table, no weights)
reaches the Model's status, and the operator's estimate reads it back."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from corral_operator.planners.sizing import ModelFacts, ServingShape, estimate
from corral_operator.pull import parse_pull_result
from corral_runtime.commands.models import pull_result, tensor_bytes
from tests.support.gguf_shapes import LLAMA_31_8B, LLAMA_31_70B, LlamaShape, write_sparse_gguf
from tests.unit.operator.planners.test_sizing import LLAMA_8B, LLAMA_70B

pytestmark = pytest.mark.unit


def _stored(path: Path, digest: str) -> SimpleNamespace:
    """What ``pull_result`` reads of a stored model (corral_runtime.store.layout.StoredModel)."""
    return SimpleNamespace(
        name=SimpleNamespace(display="llama3.1:test"),
        model_digest=digest,
        size=path.stat().st_size,
        model_path=path,
    )


@pytest.mark.parametrize(
    ("shape", "expected", "size_gb"),
    [(LLAMA_31_8B, LLAMA_8B, 4.9), (LLAMA_31_70B, LLAMA_70B, 42.5)],
    ids=["8B", "70B"],
)
def test_the_pull_result_carries_the_facts_the_estimate_needs(
    tmp_path: Path, shape: LlamaShape, expected: dict[str, int], size_gb: float
) -> None:
    path = write_sparse_gguf(tmp_path / "model.gguf", shape)
    assert path.stat().st_blocks * 512 < 10 * 1024 * 1024  # sparse: no weights on disk
    doc = pull_result(_stored(path, "sha256:" + shape.name.encode().hex().ljust(64, "0")[:64]))
    assert doc["quantization"] == "Q4_K_M" and doc["contextLength"] == 131072
    assert round(doc["weightsBytes"] / 1e9, 1) == size_gb  # the published files' sizes
    # Through the termination message, into the Model's status.
    result = parse_pull_result(json.dumps(doc, separators=(",", ":")))
    assert result is not None
    status = result.as_status()
    assert {key: status[key] for key in expected} == expected
    assert status["parameterCount"] == doc["parameterCount"] > 0
    assert len(json.dumps(doc)) < 4000  # the kubelet keeps 4 KiB of a termination message

    facts = ModelFacts.from_status(status)
    assert facts is not None
    assert (facts.kv_heads, facts.key_length, facts.value_length) == (8, 128, 128)
    need = estimate(facts, ServingShape(context=8192, parallel=1))
    assert need.weights_bytes == doc["weightsBytes"]
    assert need.kv_cache_bytes == 8192 * shape.layers * 8 * 256 * 2


def test_a_file_without_a_readable_tensor_table_reports_no_sizes(tmp_path: Path) -> None:
    path = write_sparse_gguf(tmp_path / "model.gguf", LLAMA_31_8B)
    with open(path, "r+b") as f:
        f.truncate(4096)  # the header's metadata, then nothing of the tensor table
    assert tensor_bytes(path) == {}
