"""Which load serves a name: names with the same weights, projector and adapters and the same
load options share one (``load_key``, ``serving_load``), as Ollama's runners are keyed by the
model file; anything else that makes a context differ makes another load."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.engine.manager import LoadChoice, LoadKey, load_key, serving_load
from corral_runtime.engine.types import LoadOptions
from corral_runtime.store.layout import (
    ADAPTER_LAYER,
    MODEL_LAYER,
    PROJECTOR_LAYER,
    Layer,
    Manifest,
    StoredModel,
)
from corral_runtime.store.names import parse_name

pytestmark = pytest.mark.unit

WEIGHTS = "sha256:" + "a" * 64
OTHER_WEIGHTS = "sha256:" + "b" * 64
PROJECTOR = "sha256:" + "c" * 64
TEMPLATE = "sha256:" + "d" * 64
OPTIONS = LoadOptions(num_ctx=2048, num_gpu=None, num_thread=2, num_batch=512)


def _stored(name: str, *layers: tuple[str, str], template: str | None = None) -> StoredModel:
    manifest = Manifest(
        config=Layer("application/vnd.docker.container.image.v1+json", TEMPLATE, 1),
        layers=tuple(Layer(media, digest, 1) for media, digest in layers),
        raw=name.encode(),
    )
    return StoredModel(
        name=parse_name(name),
        manifest=manifest,
        model_path=Path("/models/blobs") / layers[0][1].replace(":", "-"),
        modified=0.0,
        template=template,
    )


def test_an_alias_with_its_own_template_has_the_same_key() -> None:
    a = _stored("a", (MODEL_LAYER, WEIGHTS))
    b = _stored("b", (MODEL_LAYER, WEIGHTS), ("application/vnd.ollama.image.template", TEMPLATE))
    assert load_key(a, OPTIONS) == load_key(b, OPTIONS)


@pytest.mark.parametrize(
    ("other", "options"),
    [
        (_stored("b", (MODEL_LAYER, OTHER_WEIGHTS)), OPTIONS),
        (_stored("b", (MODEL_LAYER, WEIGHTS), (PROJECTOR_LAYER, PROJECTOR)), OPTIONS),
        (_stored("b", (MODEL_LAYER, WEIGHTS), (ADAPTER_LAYER, PROJECTOR)), OPTIONS),
        (_stored("b", (MODEL_LAYER, WEIGHTS)), LoadOptions(1024, None, 2, 512)),
        (_stored("b", (MODEL_LAYER, WEIGHTS)), LoadOptions(2048, 0, 2, 512)),
        (_stored("b", (MODEL_LAYER, WEIGHTS)), LoadOptions(2048, None, 4, 512)),
        (_stored("b", (MODEL_LAYER, WEIGHTS)), LoadOptions(2048, None, 2, 256)),
    ],
    ids=["weights", "projector", "adapter", "num_ctx", "num_gpu", "num_thread", "num_batch"],
)
def test_anything_that_makes_another_context_makes_another_key(
    other: StoredModel, options: LoadOptions
) -> None:
    assert load_key(_stored("a", (MODEL_LAYER, WEIGHTS)), OPTIONS) != load_key(other, options)


KEY = load_key(_stored("a", (MODEL_LAYER, WEIGHTS)), OPTIONS)
SMALLER = load_key(_stored("a", (MODEL_LAYER, WEIGHTS)), LoadOptions(1024, None, 2, 512))


def test_a_name_not_loaded_shares_an_equal_load_or_makes_one() -> None:
    assert serving_load(KEY, None, False, {KEY, SMALLER}) == LoadChoice(serve=KEY)
    assert serving_load(KEY, None, False, {SMALLER}) == LoadChoice(serve=None)


def test_a_loaded_name_stays_on_its_load_while_it_matches_or_is_busy() -> None:
    assert serving_load(KEY, KEY, False, {KEY}) == LoadChoice(serve=KEY)
    assert serving_load(KEY, SMALLER, True, {KEY, SMALLER}) == LoadChoice(serve=SMALLER)


def test_an_idle_name_asking_for_other_options_leaves_its_load() -> None:
    assert serving_load(KEY, SMALLER, False, {SMALLER}) == LoadChoice(None, drop_current=True)
    assert serving_load(KEY, SMALLER, False, {KEY, SMALLER}) == LoadChoice(KEY, drop_current=True)


def test_a_key_compares_by_value() -> None:
    same = LoadKey(WEIGHTS, (), 2048, None, 2, 512)
    assert same == KEY and hash(same) == hash(KEY)
