"""Sparse GGUF files with the headers of real Llama 3.1 models (8B and 70B, Q4_K_M): the metadata
and the full tensor table with each tensor's true shape and quantization, the data section left
as a hole (the file has its real length, but no weights are written).

The quantization follows llama.cpp's Q4_K_M recipe: Q4_K everywhere, Q6_K for the output head
and for ``attn_v`` and ``ffn_down`` in the layers its ``use_more_bits`` picks, F32 norms. The
sizes come out as the published files' (Llama-3.1-8B Q4_K_M: 4.92 GB).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from tests.support.gguf_corpus import KV, STRING, U32, U64, _pad, _string, _value

GGML_F32, GGML_Q4_K, GGML_Q6_K = 0, 12, 14
_BLOCKS = {GGML_F32: (1, 4), GGML_Q4_K: (256, 144), GGML_Q6_K: (256, 210)}
Q4_K_M = 15  # general.file_type
ALIGNMENT = 32


@dataclass(frozen=True)
class LlamaShape:
    """The hyperparameters of a Llama 3.1 model, as its GGUF metadata states them."""

    name: str
    embedding: int
    layers: int
    heads: int
    kv_heads: int
    feed_forward: int
    vocab: int = 128256
    context: int = 131072

    @property
    def head_dim(self) -> int:
        return self.embedding // self.heads


LLAMA_31_8B = LlamaShape("Llama-3.1-8B", 4096, 32, 32, 8, 14336)
LLAMA_31_70B = LlamaShape("Llama-3.1-70B", 8192, 80, 64, 8, 28672)


def tensor_bytes(dims: tuple[int, ...], ggml_type: int) -> int:
    block, size = _BLOCKS[ggml_type]
    elements = 1
    for dim in dims:
        elements *= dim
    return elements // block * size


def _more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth, and every third layer between."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensors(shape: LlamaShape) -> list[tuple[str, tuple[int, ...], int]]:
    """(name, dims, type) of every tensor, in llama.cpp's order."""
    e, f, kv = shape.embedding, shape.feed_forward, shape.kv_heads * shape.head_dim
    table = [("token_embd.weight", (e, shape.vocab), GGML_Q4_K)]
    for i in range(shape.layers):
        wide = GGML_Q6_K if _more_bits(i, shape.layers) else GGML_Q4_K
        table += [
            (f"blk.{i}.attn_norm.weight", (e,), GGML_F32),
            (f"blk.{i}.attn_q.weight", (e, e), GGML_Q4_K),
            (f"blk.{i}.attn_k.weight", (e, kv), GGML_Q4_K),
            (f"blk.{i}.attn_v.weight", (e, kv), wide),
            (f"blk.{i}.attn_output.weight", (e, e), GGML_Q4_K),
            (f"blk.{i}.ffn_norm.weight", (e,), GGML_F32),
            (f"blk.{i}.ffn_gate.weight", (e, f), GGML_Q4_K),
            (f"blk.{i}.ffn_up.weight", (e, f), GGML_Q4_K),
            (f"blk.{i}.ffn_down.weight", (f, e), wide),
        ]
    table += [
        ("output_norm.weight", (e,), GGML_F32),
        ("output.weight", (e, shape.vocab), GGML_Q6_K),
        ("rope_freqs.weight", (shape.head_dim // 2,), GGML_F32),
    ]
    return table


def metadata(shape: LlamaShape) -> list[KV]:
    parameters = sum(
        tensor_bytes(dims, GGML_F32) // 4 for name, dims, _ in tensors(shape) if "rope" not in name
    )
    return [
        KV("general.architecture", STRING, "llama"),
        KV("general.name", STRING, shape.name),
        KV("general.parameter_count", U64, parameters),
        KV("general.file_type", U32, Q4_K_M),
        KV("llama.context_length", U32, shape.context),
        KV("llama.embedding_length", U32, shape.embedding),
        KV("llama.block_count", U32, shape.layers),
        KV("llama.feed_forward_length", U32, shape.feed_forward),
        KV("llama.attention.head_count", U32, shape.heads),
        KV("llama.attention.head_count_kv", U32, shape.kv_heads),
        KV("llama.vocab_size", U32, shape.vocab),
    ]


def write_sparse_gguf(path: Path, shape: LlamaShape) -> Path:
    """The header and tensor table of ``shape``; the data section a hole of its true length."""
    table = tensors(shape)
    kvs = metadata(shape)
    out = bytearray(b"GGUF") + struct.pack("<IQQ", 3, len(table), len(kvs))
    for kv in kvs:
        out += _string(kv.key) + struct.pack("<I", kv.vtype) + _value(kv.vtype, kv.value)
    offset = 0
    for name, dims, ggml_type in table:
        out += _string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<q", d) for d in dims)
        out += struct.pack("<IQ", ggml_type, offset)
        offset += _pad(tensor_bytes(dims, ggml_type), ALIGNMENT)
    out += bytes(_pad(len(out), ALIGNMENT) - len(out))
    with open(path, "wb") as f:
        f.write(out)
        f.truncate(len(out) + offset)
    return path


def weights_bytes(shape: LlamaShape) -> int:
    return sum(tensor_bytes(dims, ggml_type) for _, dims, ggml_type in tensors(shape))
