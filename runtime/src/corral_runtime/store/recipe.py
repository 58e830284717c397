"""Models made in the store from a recipe (``POST /api/create``, a Modelfile's fields).

A recipe names a model blob already in the store (an uploaded file, or the model it derives
``from``) and the text around it: template, system prompt, parameters, messages, licence. The
blob is verified and checked as a GGUF file before a manifest names it, and the manifest is
written last, so a refused recipe leaves no model behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from corral_runtime.store.digests import InvalidDigestError, parse_digest
from corral_runtime.store.gguf import GGUFDetails
from corral_runtime.store.layout import (
    MODEL_LAYER,
    CorruptStoreError,
    Layer,
    ModelNotFoundError,
    ModelStore,
    StoredModel,
)
from corral_runtime.store.names import ModelName
from corral_runtime.store.pull import model_config

_T = TypeVar("_T")
Emit = Callable[[dict[str, Any]], None]


class RecipeError(ValueError):
    """A recipe the store cannot make a model from (the request's fault); nothing was written."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """What a new model is made of: ``files`` (file name -> digest) or ``base``, and text.

    Fields left None are inherited from ``base``; ``parameters`` are merged over its own.
    """

    base: ModelName | None = None
    files: dict[str, str] = field(default_factory=dict)
    adapters: bool = False
    quantize: str | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] | None = None
    license: str | None = None


def refusal(recipe: Recipe) -> str | None:
    """Why a recipe asks for what corral cannot do, before anything is read (None: nothing)."""
    if recipe.quantize:
        return "quantization is not supported"
    if recipe.adapters:
        return "LoRA adapters are not supported yet"
    if recipe.base is None and not recipe.files:
        return "neither 'from' nor 'files' was specified"
    return None


def _file_layer(store: ModelStore, files: dict[str, str]) -> Layer:
    ggufs = [(name, digest) for name, digest in files.items() if name.lower().endswith(".gguf")]
    if len(ggufs) != 1:
        raise RecipeError("files must name exactly one .gguf file")
    filename, raw_digest = ggufs[0]
    try:
        digest = parse_digest(raw_digest)
    except InvalidDigestError as exc:
        raise RecipeError(str(exc)) from exc
    size = store.blob_size(digest) if store.has_blob(digest) else None
    if size is None:
        raise RecipeError(f"blob {digest} for {filename} does not exist; upload it first")
    return Layer(MODEL_LAYER, digest, size)


def _checked_model(store: ModelStore, layer: Layer) -> GGUFDetails:
    """A model blob verified and validated before it becomes (part of) a model (GGUFError for a
    file llama.cpp must not be given)."""
    try:
        return store.check_model_blob(layer.digest, layer.size)
    except (ModelNotFoundError, CorruptStoreError) as exc:
        raise RecipeError(
            f"blob {layer.digest} is missing or does not match its digest; upload it again"
        ) from exc


def _first(given: _T | None, inherited: _T | None) -> _T | None:
    return given if given is not None else inherited


def create_from_recipe(
    store: ModelStore, target: ModelName, recipe: Recipe, emit: Emit
) -> StoredModel:
    """Write model ``target`` from ``recipe``, reporting Ollama's create status lines.

    RecipeError for a recipe that cannot be made, ModelNotFoundError for a missing base,
    GGUFError for a model blob that is no valid GGUF file.
    """
    reason = refusal(recipe)
    if reason is not None:
        raise RecipeError(reason)
    base = store.get(recipe.base) if recipe.base is not None else None
    if recipe.files:
        model_layer = _file_layer(store, recipe.files)
    else:
        assert base is not None
        layer = base.manifest.layer(MODEL_LAYER)
        assert layer is not None
        model_layer = layer
    details = _checked_model(store, model_layer)
    emit({"status": f"using existing layer {model_layer.digest}"})
    params = dict(base.params) if base is not None else {}
    params.update(recipe.parameters)
    if base is not None and not recipe.files:
        unsupported = base.manifest.unsupported_parts()
        if unsupported is not None:  # refused rather than carried into a model that ignores them
            raise RecipeError(f"{recipe.base} has {unsupported}, which are not supported yet")
    emit({"status": "writing manifest"})
    model = store.compose_model(
        target,
        model_layer,
        template=_first(recipe.template, base.template if base else None),
        system=_first(recipe.system, base.system if base else None),
        params=params,
        messages=_first(recipe.messages, base.messages if base else None),
        license=_first(recipe.license, base.license if base else None),
        config=model_config(details),
    )
    emit({"status": "success"})
    return model
