"""Malformed GGUF files, generated at test time from a tiny valid model written here.

``tiny_model()`` is a complete one-layer llama-architecture model (F32 tensors, a ten-token
SentencePiece-style vocabulary) that llama.cpp loads and runs; ``write_gguf`` serialises any
``GGUFSpec``, so a variant is the tiny model with one thing changed: a count, a string length, a
type, the alignment, a tensor's shape or offset, a required key, or the bytes themselves
(truncation at many offsets, random bytes). ``malformed_variants()`` names each one and says what
the refusal should mention. Nothing here is checked in as a binary.
"""

from __future__ import annotations

import random
import string
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FORMATS = {
    U8: "<B",
    I8: "<b",
    U16: "<H",
    I16: "<h",
    U32: "<I",
    I32: "<i",
    F32: "<f",
    BOOL: "<?",
    U64: "<Q",
    I64: "<q",
    F64: "<d",
}
GGML_F32, GGML_Q4_0, GGML_I8 = 0, 2, 24


@dataclass(frozen=True)
class KV:
    key: str
    vtype: int
    value: Any  # for arrays: (item_type, [items])


@dataclass(frozen=True)
class Tensor:
    name: str
    dims: tuple[int, ...]
    data: bytes
    ggml_type: int = GGML_F32
    offset: int | None = None  # None: where llama.cpp expects it


@dataclass(frozen=True)
class GGUFSpec:
    kvs: tuple[KV, ...]
    tensors: tuple[Tensor, ...]
    version: int = 3
    alignment: int = 32
    # Raw overrides for the header counts (None: the true counts).
    kv_count: int | None = None
    tensor_count: int | None = None

    def with_kv(self, key: str, vtype: int, value: Any) -> GGUFSpec:
        """This spec with ``key`` set (replaced in place, or appended)."""
        kvs = [kv for kv in self.kvs if kv.key != key]
        index = next((i for i, kv in enumerate(self.kvs) if kv.key == key), len(kvs))
        kvs.insert(index, KV(key, vtype, value))
        return replace(self, kvs=tuple(kvs))

    def without_kv(self, key: str) -> GGUFSpec:
        return replace(self, kvs=tuple(kv for kv in self.kvs if kv.key != key))

    def with_tensor(self, index: int, **changes: Any) -> GGUFSpec:
        tensors = list(self.tensors)
        tensors[index] = replace(tensors[index], **changes)
        return replace(self, tensors=tuple(tensors))


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _value(vtype: int, value: Any) -> bytes:
    if vtype == STRING:
        return _string(value)
    if vtype == ARRAY:
        item_type, items = value
        body = b"".join(_value(item_type, item) for item in items)
        return struct.pack("<IQ", item_type, len(items)) + body
    return struct.pack(_FORMATS[vtype], value)


def _pad(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


def encode(spec: GGUFSpec) -> bytes:
    """The file a spec describes, laid out as llama.cpp writes GGUF files."""
    out = bytearray(b"GGUF")
    out += struct.pack("<I", spec.version)
    out += struct.pack("<Q", len(spec.tensors) if spec.tensor_count is None else spec.tensor_count)
    out += struct.pack("<Q", len(spec.kvs) if spec.kv_count is None else spec.kv_count)
    for kv in spec.kvs:
        out += _string(kv.key) + struct.pack("<I", kv.vtype) + _value(kv.vtype, kv.value)
    offset = 0
    for tensor in spec.tensors:
        out += _string(tensor.name) + struct.pack("<I", len(tensor.dims))
        out += b"".join(struct.pack("<q", d) for d in tensor.dims)
        at = offset if tensor.offset is None else tensor.offset
        out += struct.pack("<IQ", tensor.ggml_type, at)
        offset += _pad(len(tensor.data), spec.alignment)
    out += bytes(_pad(len(out), spec.alignment) - len(out))
    for tensor in spec.tensors:
        out += tensor.data + bytes(_pad(len(tensor.data), spec.alignment) - len(tensor.data))
    return bytes(out)


def write_gguf(path: Path, spec: GGUFSpec) -> Path:
    path.write_bytes(encode(spec))
    return path


# -- the tiny valid model ------------------------------------------------------------------------

N_EMBD, N_HEAD, N_FF, N_CTX = 32, 2, 64, 4096
# SentencePiece-style: three specials, the 256 byte tokens llama.cpp falls back to, some words.
WORDS = ["▁a", "▁b", "▁c", "▁hello", "▁world", "▁the"]
VOCAB = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *WORDS]


def _f32(count: int, rng: random.Random, scale: float = 0.02) -> bytes:
    return struct.pack(f"<{count}f", *(rng.uniform(-scale, scale) for _ in range(count)))


def _ones(count: int) -> bytes:
    return struct.pack(f"<{count}f", *([1.0] * count))


def tiny_model(seed: int = 0) -> GGUFSpec:
    """A one-layer llama model small enough to write in a millisecond and load in llama.cpp."""
    rng = random.Random(seed)
    n_vocab = len(VOCAB)
    token_types = [2, 3, 3] + [6] * 256 + [1] * len(WORDS)
    scores = [0.0] * 259 + [-float(i) for i in range(len(WORDS))]
    kvs = (
        KV("general.architecture", STRING, "llama"),
        KV("general.name", STRING, "corral tiny test model"),
        KV("general.file_type", U32, 0),
        KV("llama.context_length", U32, N_CTX),
        KV("llama.embedding_length", U32, N_EMBD),
        KV("llama.block_count", U32, 1),
        KV("llama.feed_forward_length", U32, N_FF),
        KV("llama.attention.head_count", U32, N_HEAD),
        KV("llama.attention.head_count_kv", U32, N_HEAD),
        KV("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        KV("llama.rope.dimension_count", U32, N_EMBD // N_HEAD),
        KV("tokenizer.ggml.model", STRING, "llama"),
        KV("tokenizer.ggml.tokens", ARRAY, (STRING, VOCAB)),
        KV("tokenizer.ggml.scores", ARRAY, (F32, scores)),
        KV("tokenizer.ggml.token_type", ARRAY, (I32, token_types)),
        KV("tokenizer.ggml.bos_token_id", U32, 1),
        KV("tokenizer.ggml.eos_token_id", U32, 2),
        KV("tokenizer.ggml.unknown_token_id", U32, 0),
    )

    def matrix(name: str, cols: int, rows: int) -> Tensor:
        return Tensor(name, (cols, rows), _f32(cols * rows, rng))

    tensors = (
        matrix("token_embd.weight", N_EMBD, n_vocab),
        Tensor("output_norm.weight", (N_EMBD,), _ones(N_EMBD)),
        Tensor("blk.0.attn_norm.weight", (N_EMBD,), _ones(N_EMBD)),
        matrix("blk.0.attn_q.weight", N_EMBD, N_EMBD),
        matrix("blk.0.attn_k.weight", N_EMBD, N_EMBD),
        matrix("blk.0.attn_v.weight", N_EMBD, N_EMBD),
        matrix("blk.0.attn_output.weight", N_EMBD, N_EMBD),
        Tensor("blk.0.ffn_norm.weight", (N_EMBD,), _ones(N_EMBD)),
        matrix("blk.0.ffn_gate.weight", N_EMBD, N_FF),
        matrix("blk.0.ffn_up.weight", N_EMBD, N_FF),
        matrix("blk.0.ffn_down.weight", N_FF, N_EMBD),
    )
    return GGUFSpec(kvs=kvs, tensors=tensors)


def model_of_size(size: int, seed: int = 0) -> bytes:
    """The tiny model with one more metadata string of seeded random letters: a model file of
    about ``size`` bytes (exactly, when it is a multiple of the alignment, 32) that llama.cpp
    loads like the tiny model, for tests that move large files (pulls in many parts). llama.cpp
    ignores metadata it does not know, where an extra tensor would fail its tensor count."""
    base = tiny_model(seed)
    letters = string.ascii_letters.encode()
    table = bytes(letters[i % len(letters)] for i in range(256))

    def padded(length: int) -> bytes:
        text = random.Random(seed).randbytes(length).translate(table)
        return encode(replace(base, kvs=(*base.kvs, KV("corral.padding", STRING, text))))

    return padded(max(0, size - len(padded(0))))


# -- the malformed variants ----------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A named malformed file and a fragment its refusal must contain."""

    name: str
    data: bytes
    reason: str

    def write(self, folder: Path) -> Path:
        path = folder / f"{self.name}.gguf"
        path.write_bytes(self.data)
        return path


@dataclass
class _Corpus:
    base: GGUFSpec
    base_bytes: bytes
    variants: list[Variant] = field(default_factory=list)

    def spec(self, name: str, reason: str, spec: GGUFSpec) -> None:
        self.variants.append(Variant(name, encode(spec), reason))

    def raw(self, name: str, reason: str, change: Callable[[bytearray], bytes | bytearray]) -> None:
        self.variants.append(Variant(name, bytes(change(bytearray(self.base_bytes))), reason))


def malformed_variants(seed: int = 0) -> list[Variant]:
    """Every malformed variant of ``tiny_model(seed)``, in a fixed order."""
    base = tiny_model(seed)
    corpus = _Corpus(base, encode(base))
    first_key_len = 24  # the first key's length field: after magic, version and two counts
    first_key_type = first_key_len + 8 + len(base.kvs[0].key.encode())

    corpus.raw("bad_magic", "bad magic", lambda b: b"GGML" + b[4:])
    corpus.spec("version_1", "unsupported GGUF version", replace(base, version=1))
    corpus.spec("version_99", "unsupported GGUF version", replace(base, version=99))
    corpus.spec("huge_kv_count", "metadata keys", replace(base, kv_count=1 << 62))
    corpus.spec("huge_tensor_count", "tensors", replace(base, tensor_count=1 << 62))
    corpus.spec("kv_count_past_end", "", replace(base, kv_count=len(base.kvs) + 1))
    corpus.raw(
        "huge_key_length",
        "a string of",
        lambda b: b[:first_key_len] + struct.pack("<Q", 1 << 62) + b[first_key_len + 8 :],
    )
    corpus.raw(
        "key_length_past_end",
        "a string of",
        lambda b: b[:first_key_len] + struct.pack("<Q", len(b)) + b[first_key_len + 8 :],
    )
    corpus.raw(
        "unknown_value_type",
        "unknown value type",
        lambda b: b[:first_key_type] + struct.pack("<I", 99) + b[first_key_type + 4 :],
    )
    # A string value whose declared length is 2^40 (the bytes that follow are the next key).
    named = encode(base.with_kv("general.name", STRING, "NAME"))
    at = named.index(b"NAME") - 8
    corpus.variants.append(
        Variant(
            "huge_string_value",
            named[:at] + struct.pack("<Q", 1 << 40) + named[at + 8 :],
            "a string of",
        )
    )
    corpus.spec(
        "array_of_arrays",
        "array of arrays",
        base.with_kv("zz.nested", ARRAY, (ARRAY, [])),
    )
    corpus.spec(
        "array_unknown_item_type",
        "unknown value type",
        base.with_kv("zz.odd", ARRAY, (77, [])),
    )
    count_at = corpus.base_bytes.index(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 8
    corpus.raw(
        "huge_array_count",
        "does not fit",
        lambda b: b[:count_at] + struct.pack("<Q", 1 << 60) + b[count_at + 8 :],
    )
    corpus.spec(
        "duplicate_key",
        "duplicate metadata key",
        replace(base, kvs=(*base.kvs, KV("llama.block_count", U32, 1))),
    )
    corpus.spec("alignment_zero", "not a power of two", _aligned(base, 0, U32))
    corpus.spec("alignment_not_power_of_two", "not a power of two", _aligned(base, 48, U32))
    corpus.spec("alignment_wrong_type", "not a uint32", _aligned(base, 32, U64))
    corpus.spec("block_count_zero", "block_count", base.with_kv("llama.block_count", U32, 0))
    corpus.spec("block_count_huge", "block_count", base.with_kv("llama.block_count", U32, 1 << 30))
    corpus.spec(
        "block_count_missing", "block_count is missing", base.without_kv("llama.block_count")
    )
    corpus.spec("block_count_string", "block_count", base.with_kv("llama.block_count", STRING, "1"))
    corpus.spec(
        "context_length_zero", "context_length", base.with_kv("llama.context_length", U32, 0)
    )
    corpus.spec(
        "embedding_length_missing",
        "embedding_length is missing",
        base.without_kv("llama.embedding_length"),
    )
    corpus.spec(
        "architecture_missing", "general.architecture", base.without_kv("general.architecture")
    )
    corpus.spec(
        "architecture_wrong_type",
        "general.architecture",
        base.with_kv("general.architecture", U32, 7),
    )
    corpus.spec(
        "tokens_not_strings",
        "tokenizer.ggml.tokens",
        base.with_kv("tokenizer.ggml.tokens", ARRAY, (U32, list(range(len(VOCAB))))),
    )
    corpus.spec(
        "scores_shorter_than_tokens",
        "one entry per token",
        base.with_kv("tokenizer.ggml.scores", ARRAY, (F32, [0.0])),
    )
    # Text with no token of its own then aborts llama.cpp's tokenizer (a missing byte token).
    no_bytes = [t for t in VOCAB if not t.startswith("<0x")]
    corpus.spec(
        "spm_without_byte_tokens",
        "byte tokens",
        base.with_kv("tokenizer.ggml.tokens", ARRAY, (STRING, no_bytes))
        .with_kv("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * len(no_bytes)))
        .with_kv("tokenizer.ggml.token_type", ARRAY, (I32, [1] * len(no_bytes))),
    )
    corpus.spec("tensor_unknown_type", "unknown type", base.with_tensor(1, ggml_type=99))
    corpus.spec("tensor_retired_type", "unknown type", base.with_tensor(1, ggml_type=4))
    corpus.spec("tensor_five_dims", "dimensions", base.with_tensor(1, dims=(N_EMBD, 1, 1, 1, 1)))
    corpus.spec("tensor_negative_dim", "negative dimension", base.with_tensor(1, dims=(-N_EMBD,)))
    corpus.spec(
        "tensor_elements_overflow",
        "too many elements",
        base.with_tensor(1, dims=(1 << 32, 1 << 32, 1 << 32)),
    )
    corpus.spec(
        "tensor_row_not_in_blocks",
        "not a multiple",
        base.with_tensor(1, ggml_type=GGML_Q4_0, dims=(33,)),
    )
    corpus.spec("tensor_misaligned_offset", "offset", base.with_tensor(1, offset=1))
    corpus.spec("tensor_overlapping", "offset", base.with_tensor(2, offset=0))
    corpus.spec(
        "tensor_past_the_end",
        "past the end",
        base.with_tensor(len(base.tensors) - 1, dims=(N_FF, N_EMBD * 4)),
    )
    corpus.spec(
        "tensor_duplicate_name",
        "duplicate tensor",
        base.with_tensor(2, name=base.tensors[1].name),
    )
    corpus.spec("tensor_name_too_long", "too long", base.with_tensor(1, name="t" * 100))
    corpus.spec("no_tensors", "no tensors", replace(base, tensors=()))
    corpus.raw("empty_file", "bad magic", lambda b: b"")
    size = len(corpus.base_bytes)
    for cut in (3, 8, 20, 30, 200, 700, size // 2, size - 1):
        corpus.variants.append(Variant(f"truncated_at_{cut}", corpus.base_bytes[:cut], ""))
    rng = random.Random(seed)
    corpus.raw("random_bytes", "bad magic", lambda b: rng.randbytes(4096))
    corpus.raw("gguf_then_random", "", lambda b: b[:8] + rng.randbytes(4096))
    return corpus.variants


def _aligned(spec: GGUFSpec, alignment: int, vtype: int) -> GGUFSpec:
    """The spec declaring ``general.alignment`` (laid out with the default 32 for the data)."""
    return spec.with_kv("general.alignment", vtype, alignment)
