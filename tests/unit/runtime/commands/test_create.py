"""``corral create``'s decisions: which FROM values are files, and a model made from a Modelfile
on a real store (a GGUF landed through the store's import, or refused and gone again)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.cli import build_parser
from corral_runtime.commands.create import create_from_modelfile, names_a_file
from corral_runtime.store.gguf import GGUFError
from corral_runtime.store.layout import ModelStore
from corral_runtime.store.modelfile import parse_modelfile
from corral_runtime.store.names import parse_name
from corral_runtime.store.refs import blob_digests
from tests.support.gguf_corpus import encode, tiny_model

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("base", "is_file"),
    [
        ("llama3.2:1b", False),
        ("registry.example.com/team/model:tag", False),
        ("./model.gguf", True),
        ("../models/model", True),
        ("/abs/model", True),
        ("~/model", True),
        ("model.GGUF", True),
        ("weights.bin", True),
    ],
)
def test_from_values_written_as_paths_are_files(base: str, is_file: bool) -> None:
    assert names_a_file(base) is is_file


def test_the_modelfile_defaults_to_the_one_in_the_working_directory() -> None:
    args = build_parser().parse_args(["create", "mine"])
    assert (args.name, args.file, args.models) == ("mine", "Modelfile", None)


def test_a_gguf_beside_the_modelfile_becomes_the_models_blob(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "tiny.gguf").write_bytes(encode(tiny_model()))
    store = ModelStore(tmp_path / "models")
    modelfile = parse_modelfile("FROM tiny.gguf\nSYSTEM S\nPARAMETER top_k 5\n")
    model = create_from_modelfile(store, parse_name("tiny"), modelfile, tmp_path)
    assert (model.system, model.params) == ("S", {"top_k": 5})
    assert capsys.readouterr().out.splitlines()[-1] == "success"


def test_a_file_that_is_no_gguf_is_refused_and_its_blob_removed(tmp_path: Path) -> None:
    (tmp_path / "junk.gguf").write_bytes(b"not a model" * 100)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(GGUFError):
        create_from_modelfile(
            store, parse_name("junk"), parse_modelfile("FROM junk.gguf"), tmp_path
        )
    assert (store.names(), blob_digests(store)) == ([], {})
