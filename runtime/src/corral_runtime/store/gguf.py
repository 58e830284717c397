"""GGUF files: what a model file says about itself, and whether llama.cpp can safely be given it.

``read_gguf_metadata`` reads the header and the key/value section only; tensor data is never
touched, so this is cheap even for multi-gigabyte files. Large arrays (the tokenizer's
vocabulary) are skipped unless asked for, keeping only their type and length.

``check_model_file`` is the gate a model file passes before llama.cpp sees it: the header, every
key/value, the tensor table and the data section are checked against the file's size and against
the rules llama.cpp's own loader applies (where it would refuse the file, and where it would
abort the process or read past an array instead), so a malformed or hostile file is refused with
``InvalidModelFileError`` naming the problem. Messages never name a filesystem path.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
MAX_STRING = 64 * 1024 * 1024
_U64 = struct.Struct("<Q")
_BLOCK = 1024 * 1024  # bytes read at a time where an array's strings are walked
MAX_KEYS = 1_000_000
MAX_TENSORS = 65_536
MAX_TENSOR_NAME = 63  # llama.cpp's GGML_MAX_NAME is 64 bytes, terminator included
MAX_DIMS = 4
MAX_BLOCK_COUNT = 512  # llama.cpp's LLAMA_MAX_LAYERS
MAX_CONTEXT_LENGTH = 1 << 27
MAX_EMBEDDING_LENGTH = 1 << 20
DEFAULT_ALIGNMENT = 32
_INT64_MAX = (1 << 63) - 1

# GGUF value types.
_SCALARS: dict[int, tuple[str, int]] = {
    0: ("<B", 1),
    1: ("<b", 1),
    2: ("<H", 2),
    3: ("<h", 2),
    4: ("<I", 4),
    5: ("<i", 4),
    6: ("<f", 4),
    7: ("<?", 1),
    10: ("<Q", 8),
    11: ("<q", 8),
    12: ("<d", 8),
}
_STRING, _ARRAY = 8, 9
_UINT32, _INT32, _FLOAT32 = 4, 5, 6

# ggml tensor types: (elements per block, bytes per block), as ggml's type traits say; the
# numbers ggml retired (4, 5, 31-33, 36-38) are absent, so a tensor of such a type is refused.
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
    42: (64, 18),  # Q2_0
}

# Keys llama.cpp reads with a fixed type (a wrong one aborts the process rather than failing the
# load), and the tokenizer arrays it indexes up to the vocabulary's length.
_TYPED_KEYS: dict[str, int] = {"general.architecture": _STRING}
_TOKENS = "tokenizer.ggml.tokens"
_BYTE_TOKENS = frozenset(f"<0x{b:02X}>".encode() for b in range(256))
_TOKEN_ARRAYS: dict[str, int] = {
    _TOKENS: _STRING,
    "tokenizer.ggml.scores": _FLOAT32,
    "tokenizer.ggml.token_type": _INT32,
    "tokenizer.ggml.merges": _STRING,
}

# llama.cpp's general.file_type values, named as Ollama shows them.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
}


class GGUFError(ValueError):
    """The file is not a GGUF file, or its header is truncated or corrupt."""


class InvalidModelFileError(GGUFError):
    """A file that must not reach llama.cpp; the message says why (and never where it lies)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"not a valid model file: {reason}")
        self.reason = reason


class _Reader:
    """Reads a GGUF header from a file of known size, refusing anything that reaches past it."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.size = size
        self.pos = 0
        self.last_item_type = -1

    @property
    def remaining(self) -> int:
        return self.size - self.pos

    def read(self, n: int) -> bytes:
        if n > self.remaining:
            raise InvalidModelFileError(f"truncated at byte {self.size} (needed {n} more)")
        data = self.f.read(n)
        if len(data) != n:
            raise InvalidModelFileError(f"truncated at byte {self.pos + len(data)}")
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if n > self.remaining:
            raise InvalidModelFileError(f"truncated at byte {self.size} (needed {n} more)")
        self.f.seek(n, os.SEEK_CUR)
        self.pos += n

    def u32(self) -> int:
        value: int = struct.unpack("<I", self.read(4))[0]
        return value

    def u64(self) -> int:
        value: int = struct.unpack("<Q", self.read(8))[0]
        return value

    def scalar(self, vtype: int) -> Any:
        fmt, size = _SCALARS[vtype]
        return struct.unpack(fmt, self.read(size))[0]

    def _length(self) -> int:
        length = self.u64()
        if length > MAX_STRING or length > self.remaining:
            raise InvalidModelFileError(f"a string of {length} bytes at byte {self.pos - 8}")
        return length

    def string(self) -> str:
        return self.read(self._length()).decode("utf-8", errors="replace")

    def strings(self, count: int, keep: bool) -> list[bytes]:
        """``count`` strings in a row (an array's items): their bytes if ``keep``, else none.

        Read in blocks and walked in memory: a vocabulary of 262k tokens read one string at a
        time (a chain of Python calls and a read each) took about 0.2 s of a cold start's
        model check, on the request's path. Each length is checked as ``_length`` does."""
        items: list[bytes] = []
        keep_item = items.append if keep else None
        unpack = _U64.unpack_from
        buffer, at, held = b"", 0, 0
        for _ in range(count):
            if held - at < 8:
                buffer, at = self._refill(buffer, at, 8)
                held = len(buffer)
            length = unpack(buffer, at)[0]
            if length > MAX_STRING:
                offset = self.pos - (held - at)
                raise InvalidModelFileError(f"a string of {length} bytes at byte {offset}")
            end = at + 8 + length
            if end > held:
                buffer, at = self._refill(buffer, at, 8 + length)
                held, end = len(buffer), 8 + length
            if keep_item is not None:
                keep_item(buffer[at + 8 : end])
            at = end
        unread = held - at
        if unread:  # read ahead past the array: the next value starts there
            self.f.seek(-unread, os.SEEK_CUR)
            self.pos -= unread
        return items

    def _refill(self, buffer: bytes, at: int, need: int) -> tuple[bytes, int]:
        """The unread rest of ``buffer`` and the file's next block, at least ``need`` bytes."""
        rest = buffer[at:]
        more = min(max(need - len(rest), _BLOCK), self.remaining)
        if len(rest) + more < need:
            raise InvalidModelFileError(f"truncated at byte {self.size} (needed {need} more)")
        return rest + self.read(more), 0

    def value(self, vtype: int, keep_arrays: bool, raw: bool = False) -> Any:
        """One value; an array is skipped unless kept (``raw``: its strings as bytes)."""
        if vtype in _SCALARS:
            return self.scalar(vtype)
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise InvalidModelFileError(f"unknown value type {vtype}")
        item_type = self.u32()
        count = self.u64()
        self.last_item_type = item_type
        if item_type == _ARRAY:
            raise InvalidModelFileError("an array of arrays")
        if item_type not in _SCALARS and item_type != _STRING:
            raise InvalidModelFileError(f"an array of unknown value type {item_type}")
        least = _SCALARS[item_type][1] if item_type in _SCALARS else 8
        if count * least > self.remaining:
            raise InvalidModelFileError(f"an array of {count} items does not fit in the file")
        if item_type == _STRING and (raw or keep_arrays):
            items = self.strings(count, keep=True)
            return items if raw else [item.decode("utf-8", errors="replace") for item in items]
        if keep_arrays:
            return [self.scalar(item_type) for _ in range(count)]
        if item_type in _SCALARS:
            self.skip(least * count)
        else:
            self.strings(count, keep=False)
        return ArrayInfo(item_type=item_type, length=count)


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """Stands in for an array whose items were skipped."""

    item_type: int
    length: int


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dims: tuple[int, ...]
    ggml_type: int
    offset: int


@dataclass(frozen=True, slots=True)
class GGUFHeader:
    """What precedes a GGUF file's tensor data: its metadata and (when read) its tensor table."""

    version: int
    metadata: dict[str, Any]
    types: dict[str, int]  # each key's GGUF value type
    arrays: dict[str, ArrayInfo]  # each array's item type and length (kept or skipped)
    tensor_count: int
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int


def _open_read(path: Path) -> BinaryIO:
    """Open a file for reading without following a symbolic link at its last component."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return os.fdopen(fd, "rb")


def read_gguf_header(
    f: BinaryIO,
    size: int,
    *,
    keep_arrays: bool = False,
    keep: frozenset[str] = frozenset(),
    tensors: bool = True,
) -> GGUFHeader:
    """Parse a GGUF header (version 2 or 3) from ``f`` (at its start), ``size`` bytes long.

    Arrays are skipped (an ``ArrayInfo`` in their place) unless ``keep_arrays``; string arrays
    named in ``keep`` are kept as undecoded bytes.
    """
    reader = _Reader(f, size)
    if size < 4 or reader.read(4) != GGUF_MAGIC:
        raise InvalidModelFileError("not a GGUF file (bad magic)")
    version = reader.u32()
    if version not in (2, 3):
        raise InvalidModelFileError(f"unsupported GGUF version {version}")
    tensor_count = reader.u64()
    kv_count = reader.u64()
    # Each key/value takes at least 13 bytes and each tensor entry at least 28.
    if kv_count > MAX_KEYS or kv_count * 13 > reader.remaining:
        raise InvalidModelFileError(f"the header claims {kv_count} metadata keys")
    if tensor_count > MAX_TENSORS or tensor_count * 28 > reader.remaining:
        raise InvalidModelFileError(f"the header claims {tensor_count} tensors")
    metadata: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": tensor_count}
    types: dict[str, int] = {}
    arrays: dict[str, ArrayInfo] = {}
    for _ in range(kv_count):
        key = reader.string()
        if key in types:
            raise InvalidModelFileError(f"duplicate metadata key {key!r}")
        types[key] = reader.u32()
        value = reader.value(types[key], keep_arrays, raw=key in keep)
        if isinstance(value, list):
            arrays[key] = ArrayInfo(reader.last_item_type, len(value))
        elif isinstance(value, ArrayInfo):
            arrays[key] = value
        metadata[key] = value
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if types.get("general.alignment", _UINT32) != _UINT32:
        raise InvalidModelFileError("general.alignment is not a uint32")
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise InvalidModelFileError(f"general.alignment {alignment!r} is not a power of two")
    table = tuple(_tensor_info(reader) for _ in range(tensor_count)) if tensors else ()
    data_offset = -(-reader.pos // alignment) * alignment
    return GGUFHeader(version, metadata, types, arrays, tensor_count, table, alignment, data_offset)


def _tensor_info(reader: _Reader) -> TensorInfo:
    name = reader.string()
    if len(name.encode()) > MAX_TENSOR_NAME:
        raise InvalidModelFileError(f"tensor name {name[:40]!r}… is too long")
    n_dims = reader.u32()
    if n_dims > MAX_DIMS:
        raise InvalidModelFileError(f"tensor {name!r} has {n_dims} dimensions")
    dims = tuple(struct.unpack("<q", reader.read(8))[0] for _ in range(n_dims))
    return TensorInfo(name=name, dims=dims, ggml_type=reader.u32(), offset=reader.u64())


def tensor_nbytes(tensor: TensorInfo) -> int:
    """Bytes of a tensor's data; InvalidModelFileError where llama.cpp would refuse its shape."""
    name = tensor.name
    if tensor.ggml_type not in GGML_TYPES:
        raise InvalidModelFileError(f"tensor {name!r} has unknown type {tensor.ggml_type}")
    block, block_bytes = GGML_TYPES[tensor.ggml_type]
    elements = 1
    for dim in tensor.dims:
        if dim < 0:
            raise InvalidModelFileError(f"tensor {name!r} has a negative dimension")
        elements *= dim
        if elements > _INT64_MAX:
            raise InvalidModelFileError(f"tensor {name!r} has too many elements")
    row = tensor.dims[0] if tensor.dims else 1
    if row % block:
        raise InvalidModelFileError(
            f"tensor {name!r}: its rows of {row} are not a multiple of its type's block {block}"
        )
    return elements // block * block_bytes


def _check_keys(header: GGUFHeader) -> None:
    for key, vtype in _TYPED_KEYS.items():
        if header.types.get(key, vtype) != vtype:
            raise InvalidModelFileError(f"{key} has the wrong type")
    tokens = header.arrays.get(_TOKENS)
    for key, item_type in _TOKEN_ARRAYS.items():
        if key not in header.types:
            continue
        shape = header.arrays.get(key)
        if shape is None or shape.item_type != item_type:
            raise InvalidModelFileError(f"{key} is not an array of the expected type")
        if key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type") and (
            tokens is None or shape.length != tokens.length
        ):
            raise InvalidModelFileError(f"{key} does not have one entry per token")
    if header.metadata.get("tokenizer.ggml.model") == "llama":
        # A SentencePiece vocabulary falls back to byte tokens for text it has no token for;
        # llama.cpp aborts the process where one of the 256 is missing.
        vocab = header.metadata.get(_TOKENS)
        present = set(vocab) if isinstance(vocab, list) else set()
        if not _BYTE_TOKENS.issubset(present):
            raise InvalidModelFileError("its SentencePiece vocabulary lacks byte tokens")


def _check_architecture(metadata: dict[str, Any]) -> None:
    arch = metadata.get("general.architecture")
    if (
        not isinstance(arch, str)
        or not arch
        or not arch.replace("-", "").replace("_", "").isalnum()
    ):
        raise InvalidModelFileError("general.architecture is missing or not a name")
    bounds = (
        ("block_count", MAX_BLOCK_COUNT),
        ("context_length", MAX_CONTEXT_LENGTH),
        ("embedding_length", MAX_EMBEDDING_LENGTH),
    )
    for key, most in bounds:
        value = metadata.get(f"{arch}.{key}")
        if value is None:
            raise InvalidModelFileError(f"{arch}.{key} is missing")
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= most:
            raise InvalidModelFileError(f"{arch}.{key} is {value!r} (expected 1 to {most})")


def _check_tensors(header: GGUFHeader, size: int) -> None:
    """The tensor table as llama.cpp lays it out: in order, each at the running aligned offset."""
    alignment = header.alignment
    expected = 0
    seen: set[str] = set()
    for tensor in header.tensors:
        if tensor.name in seen:
            raise InvalidModelFileError(f"duplicate tensor {tensor.name!r}")
        seen.add(tensor.name)
        nbytes = tensor_nbytes(tensor)
        if tensor.offset != expected:
            raise InvalidModelFileError(
                f"tensor {tensor.name!r} is at offset {tensor.offset}, expected {expected}"
            )
        if header.data_offset + tensor.offset + nbytes > size:
            raise InvalidModelFileError(f"tensor {tensor.name!r} lies past the end of the file")
        expected += -(-nbytes // alignment) * alignment


# Raised whenever ``check_model_file`` refuses more or finds other details: the store keeps what
# a blob passed per version of the checks (ModelStore.check_model_blob).
GGUF_CHECKS_VERSION = 1


def check_model_file(f: BinaryIO, size: int) -> GGUFDetails:
    """Everything llama.cpp will rely on in a model file, checked; its details if it passes."""
    header = read_gguf_header(f, size, keep=frozenset({_TOKENS}))
    if header.data_offset > size:
        raise InvalidModelFileError("the tensor data section starts past the end of the file")
    _check_keys(header)
    _check_architecture(header.metadata)
    if not header.tensors:
        raise InvalidModelFileError("it holds no tensors")
    _check_tensors(header, size)
    return GGUFDetails.from_metadata(header.metadata)


def check_model_path(path: Path) -> GGUFDetails:
    """``check_model_file`` on a file by path (a symbolic link is refused, not followed)."""
    with _open_read(path) as f:
        return check_model_file(f, os.fstat(f.fileno()).st_size)


def read_gguf_metadata(source: Path | BinaryIO, *, keep_arrays: bool = False) -> dict[str, Any]:
    """Read a GGUF file's key/value metadata (version 2 or 3), by path or from an open file."""
    if isinstance(source, Path | str):
        with _open_read(Path(source)) as f:
            return read_gguf_metadata(f, keep_arrays=keep_arrays)
    size = os.fstat(source.fileno()).st_size
    return read_gguf_header(source, size, keep_arrays=keep_arrays, tensors=False).metadata


def format_parameter_count(count: int) -> str:
    """Ollama's human form: 268M, 1.2B, 8.0B."""
    if count >= 1_000_000_000:
        return f"{count / 1_000_000_000:.1f}B"
    if count >= 1_000_000:
        return f"{round(count / 1_000_000)}M"
    if count >= 1_000:
        return f"{round(count / 1_000)}K"
    return str(count)


@dataclass(frozen=True, slots=True)
class GGUFDetails:
    """The facts /api/show, /api/tags and Model status report about a GGUF model."""

    architecture: str
    family: str
    parameter_count: int | None
    parameter_size: str
    quantization_level: str
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    chat_template: str | None
    name: str | None
    # What a KV cache and a compute graph are sized from (the memory estimate, gpu.py).
    head_count: int | None = None
    head_count_kv: int | None = None  # None where per-layer (an array): head_count is the bound
    key_length: int | None = None  # None: embedding_length / head_count, as llama.cpp defaults
    value_length: int | None = None
    feed_forward_length: int | None = None
    vocab_size: int | None = None
    embedding: bool = False  # an embedding model: it embeds, it cannot generate

    @classmethod
    def from_metadata(cls, md: dict[str, Any]) -> GGUFDetails:
        arch = str(md.get("general.architecture", "") or "")

        def arch_int(key: str) -> int | None:
            value = md.get(f"{arch}.{key}")
            return int(value) if isinstance(value, int) else None

        count = md.get("general.parameter_count")
        count = int(count) if isinstance(count, int) else None
        size_label = md.get("general.size_label")
        if count is not None:
            parameter_size = format_parameter_count(count)
        elif isinstance(size_label, str):
            parameter_size = size_label
        else:
            parameter_size = ""
        file_type = md.get("general.file_type")
        quant = (
            FILE_TYPES.get(file_type, f"unknown({file_type})") if isinstance(file_type, int) else ""
        )
        template = md.get("tokenizer.chat_template")
        name = md.get("general.name")
        return cls(
            architecture=arch,
            family=arch,
            parameter_count=count,
            parameter_size=parameter_size,
            quantization_level=quant,
            context_length=arch_int("context_length"),
            embedding_length=arch_int("embedding_length"),
            block_count=arch_int("block_count"),
            chat_template=template if isinstance(template, str) else None,
            name=name if isinstance(name, str) else None,
            head_count=arch_int("attention.head_count"),
            head_count_kv=arch_int("attention.head_count_kv"),
            key_length=arch_int("attention.key_length"),
            value_length=arch_int("attention.value_length"),
            feed_forward_length=arch_int("feed_forward_length"),
            vocab_size=arch_int("vocab_size") or _array_length(md.get("tokenizer.ggml.tokens")),
            embedding=embedding_model(md),
        )


def embedding_model(metadata: Mapping[str, Any]) -> bool:
    """Whether a GGUF's header makes it an embedding model rather than a causal LM: as Ollama
    decides, one whose architecture has a ``pooling_type`` (BERT-like encoders, embedding Gemma);
    and, as llama.cpp reads it, one whose attention is not causal, which cannot generate."""
    architecture = metadata.get("general.architecture")
    if not isinstance(architecture, str):
        return False
    causal = metadata.get(f"{architecture}.attention.causal", True)
    return f"{architecture}.pooling_type" in metadata or causal is False


def _array_length(value: Any) -> int | None:
    """How many items an array key holds, whether its items were kept or skipped."""
    if isinstance(value, ArrayInfo):
        return value.length
    return len(value) if isinstance(value, list) else None


def read_gguf_details(source: Path | BinaryIO) -> GGUFDetails:
    return GGUFDetails.from_metadata(read_gguf_metadata(source))
