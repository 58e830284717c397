"""Models made from a recipe: a verified GGUF blob and its text, or a refusal writing nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral_runtime.store.gguf import GGUFError
from corral_runtime.store.layout import ModelNotFoundError, ModelStore
from corral_runtime.store.names import parse_name
from corral_runtime.store.recipe import Recipe, RecipeError, create_from_recipe, refusal
from tests.support.gguf_corpus import encode, tiny_model

pytestmark = pytest.mark.unit

GGUF = encode(tiny_model())


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


def make(store: ModelStore, name: str, recipe: Recipe) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    create_from_recipe(store, parse_name(name), recipe, events.append)
    return events


def test_a_model_from_an_uploaded_file_and_one_derived_from_it(store: ModelStore) -> None:
    digest = store.put_bytes(GGUF).digest
    events = make(store, "mine:1", Recipe(files={"m.gguf": digest}, template="T", system="S"))
    assert [e["status"] for e in events][-2:] == ["writing manifest", "success"]
    made = make(store, "derived:1", Recipe(base=parse_name("mine:1"), system="S2"))
    assert made[-1] == {"status": "success"}
    derived = store.get("derived:1")
    assert (derived.template, derived.system, derived.model_digest) == ("T", "S2", digest)


@pytest.mark.parametrize(
    ("recipe", "reason"),
    [
        (Recipe(files={"m.gguf": "x"}, quantize="q4_0"), "quantization is not supported"),
        (Recipe(files={"m.gguf": "x"}, adapters=True), "LoRA adapters are not supported yet"),
        (Recipe(), "neither 'from' nor 'files' was specified"),
        (Recipe(files={"m.gguf": "x"}), None),
    ],
)
def test_refusal(recipe: Recipe, reason: str | None) -> None:
    assert refusal(recipe) == reason


@pytest.mark.parametrize(
    "files",
    [
        {"a.txt": "sha256:" + "0" * 64},  # no .gguf
        {"a.gguf": "sha256:" + "0" * 64, "b.gguf": "sha256:" + "1" * 64},  # two
        {"m.gguf": "sha256:../../etc/passwd"},  # a digest that would escape the store
        {"m.gguf": "sha256:" + "0" * 64},  # never uploaded
    ],
)
def test_files_that_name_no_single_uploaded_gguf_are_refused(
    store: ModelStore, files: dict[str, str]
) -> None:
    with pytest.raises(RecipeError):
        make(store, "x:1", Recipe(files=files))
    assert store.names() == []


def test_a_corrupt_blob_is_refused(store: ModelStore) -> None:
    digest = store.put_bytes(GGUF).digest
    path = store.blob_path(digest)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecipeError, match="upload it again"):
        make(store, "x:1", Recipe(files={"m.gguf": digest}))
    assert store.names() == []


def test_a_blob_that_is_no_gguf_file_is_refused(store: ModelStore) -> None:
    digest = store.put_bytes(b"not a model").digest
    with pytest.raises(GGUFError):
        make(store, "x:1", Recipe(files={"m.gguf": digest}))
    assert store.names() == []


def test_a_missing_base_is_not_found(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError):
        make(store, "x:1", Recipe(base=parse_name("nope:1")))
