"""Assembling the instruct test model: parts concatenated in order, renamed into place only
when the whole hashes to the pin."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from corral_runtime.instructmodel import InstructModelCorruptError, assemble

pytestmark = pytest.mark.unit


def _parts(tmp_path: Path) -> list[Path]:
    paths = []
    for n, data in enumerate((b"GGUF", b"-part-", b"three")):
        path = tmp_path / f"part{n}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_the_parts_are_concatenated_in_order(tmp_path: Path) -> None:
    pin = hashlib.sha256(b"GGUF-part-three").hexdigest()
    target = assemble(tmp_path / "cache" / "model.gguf", _parts(tmp_path), pin)
    assert target.read_bytes() == b"GGUF-part-three"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.gguf"]


def test_a_mismatch_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(InstructModelCorruptError, match="sha256"):
        assemble(target, list(reversed(_parts(tmp_path))), hashlib.sha256(b"GGUF").hexdigest())
    assert list(target.parent.iterdir()) == []
