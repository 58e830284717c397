"""GGUF validation: the tiny model passes, and every malformed variant is refused with a reason."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from corral_runtime.store.gguf import (
    ArrayInfo,
    GGUFDetails,
    InvalidModelFileError,
    check_model_file,
    check_model_path,
    read_gguf_metadata,
)
from tests.support.gguf_corpus import (
    ARRAY,
    STRING,
    U32,
    Variant,
    encode,
    malformed_variants,
    tiny_model,
)

pytestmark = pytest.mark.unit

VARIANTS = malformed_variants()


def _check(data: bytes) -> GGUFDetails:
    return check_model_file(io.BytesIO(data), len(data))


def test_the_tiny_model_passes_with_its_details() -> None:
    details = _check(encode(tiny_model()))
    assert (details.architecture, details.block_count, details.context_length) == ("llama", 1, 4096)


def test_the_corpus_is_large_and_its_names_unique() -> None:
    names = [v.name for v in VARIANTS]
    assert len(names) >= 40 and len(set(names)) == len(names)


@pytest.mark.parametrize("variant", VARIANTS, ids=[v.name for v in VARIANTS])
def test_every_malformed_variant_is_refused_with_its_reason(variant: Variant) -> None:
    with pytest.raises(InvalidModelFileError) as caught:
        _check(variant.data)
    message = str(caught.value)
    assert message.startswith("not a valid model file: ")
    assert variant.reason in message
    assert "/" not in message.removeprefix("not a valid model file: ").split("'")[0]


def test_a_declared_size_beyond_the_file_is_never_allocated() -> None:
    """Counts and lengths are bounded by the file's size before anything is read or kept."""
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62) + bytes(16)
    with pytest.raises(InvalidModelFileError, match="a string of"):
        _check(header)


def test_the_size_given_bounds_reads_even_when_the_stream_has_more() -> None:
    data = encode(tiny_model())
    with pytest.raises(InvalidModelFileError, match="past the end"):
        check_model_file(io.BytesIO(data), len(data) - 1)


def test_metadata_of_a_model_reads_arrays_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(encode(tiny_model().with_kv("zz.list", ARRAY, (U32, [1, 2, 3]))))
    assert read_gguf_metadata(path, keep_arrays=True)["zz.list"] == [1, 2, 3]
    assert read_gguf_metadata(path)["zz.list"] == ArrayInfo(item_type=U32, length=3)
    assert read_gguf_metadata(path)["general.architecture"] == "llama"


def test_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real.gguf"
    real.write_bytes(encode(tiny_model()))
    link = tmp_path / "link.gguf"
    link.symlink_to(real)
    with pytest.raises(OSError):
        read_gguf_metadata(link)
    with pytest.raises(OSError):
        check_model_path(link)
    assert check_model_path(real).architecture == "llama"


def test_a_string_architecture_key_must_be_a_name() -> None:
    spec = tiny_model().with_kv("general.architecture", STRING, "../../etc")
    with pytest.raises(InvalidModelFileError, match=r"general\.architecture"):
        _check(encode(spec))


def test_string_arrays_are_read_whole_across_read_blocks_and_parsing_goes_on_after_them(
    tmp_path: Path,
) -> None:
    """A string array is walked in blocks of a megabyte: items that straddle a block's end
    come back whole, and the next key (and the tensor table) is read from where the array ends,
    whether its items were kept or skipped."""
    words = ["a" * 700_000, "b" * 5, "", "c" * 900_000, "d", "é" * 300_000]
    spec = tiny_model().with_kv("zz.words", ARRAY, (STRING, words)).with_kv("zz.after", U32, 7)
    path = tmp_path / "words.gguf"
    path.write_bytes(encode(spec))
    kept = read_gguf_metadata(path, keep_arrays=True)
    assert kept["zz.words"] == words and kept["zz.after"] == 7
    skipped = read_gguf_metadata(path)
    assert skipped["zz.words"] == ArrayInfo(item_type=STRING, length=len(words))
    assert skipped["zz.after"] == 7
    assert check_model_path(path).architecture == "llama"


def test_a_string_array_cut_inside_an_item_is_refused() -> None:
    data = encode(tiny_model().with_kv("zz.words", ARRAY, (STRING, ["x" * 2_000_000])))
    cut = data.index(b"x" * 64) + 1_500_000
    with pytest.raises(InvalidModelFileError, match="truncated"):
        check_model_file(io.BytesIO(data[:cut]), cut)
