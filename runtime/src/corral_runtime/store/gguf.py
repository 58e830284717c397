"""GGUF metadata: what a model file says about itself, read without loading the model.

Only the header and the key/value section are read; tensor data is never touched, so this is
cheap even for multi-gigabyte files. Large arrays (the tokenizer's vocabulary) are skipped
unless asked for, keeping only their length.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"
MAX_STRING = 64 * 1024 * 1024
MAX_KEYS = 1_000_000

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


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFError("truncated GGUF header")
        return data

    def scalar(self, vtype: int) -> Any:
        fmt, size = _SCALARS[vtype]
        return struct.unpack(fmt, self.read(size))[0]

    def string(self) -> str:
        (length,) = struct.unpack("<Q", self.read(8))
        if length > MAX_STRING:
            raise GGUFError(f"GGUF string of {length} bytes is implausible")
        return self.read(length).decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        (length,) = struct.unpack("<Q", self.read(8))
        if length > MAX_STRING:
            raise GGUFError(f"GGUF string of {length} bytes is implausible")
        self.f.seek(length, 1)

    def value(self, vtype: int, keep_arrays: bool) -> Any:
        if vtype in _SCALARS:
            return self.scalar(vtype)
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            (item_type,) = struct.unpack("<I", self.read(4))
            (count,) = struct.unpack("<Q", self.read(8))
            if keep_arrays:
                return [self.value(item_type, keep_arrays) for _ in range(count)]
            if item_type in _SCALARS:
                self.f.seek(_SCALARS[item_type][1] * count, 1)
            elif item_type == _STRING:
                for _ in range(count):
                    self.skip_string()
            else:
                for _ in range(count):
                    self.value(item_type, keep_arrays)
            return ArrayInfo(item_type=item_type, length=count)
        raise GGUFError(f"unknown GGUF value type {vtype}")


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """Stands in for an array whose items were skipped."""

    item_type: int
    length: int


def read_gguf_metadata(path: Path, *, keep_arrays: bool = False) -> dict[str, Any]:
    """Read a GGUF file's key/value metadata (version 2 or 3)."""
    with Path(path).open("rb") as f:
        reader = _Reader(f)
        if reader.read(4) != GGUF_MAGIC:
            raise GGUFError(f"{path} is not a GGUF file")
        (version,) = struct.unpack("<I", reader.read(4))
        if version not in (2, 3):
            raise GGUFError(f"unsupported GGUF version {version}")
        (tensor_count,) = struct.unpack("<Q", reader.read(8))
        (kv_count,) = struct.unpack("<Q", reader.read(8))
        if kv_count > MAX_KEYS:
            raise GGUFError(f"GGUF claims {kv_count} metadata keys")
        metadata: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": tensor_count}
        for _ in range(kv_count):
            key = reader.string()
            (vtype,) = struct.unpack("<I", reader.read(4))
            metadata[key] = reader.value(vtype, keep_arrays)
    return metadata


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
        )


def read_gguf_details(path: Path) -> GGUFDetails:
    return GGUFDetails.from_metadata(read_gguf_metadata(path))
