"""``corral create NAME -f Modelfile``: a model made in the local store from a Modelfile.

As with ``ollama create``, FROM names a model already in the store or a GGUF file (relative to
the Modelfile's directory, ``~`` expanded); the Modelfile's TEMPLATE, SYSTEM, PARAMETERs,
MESSAGEs and LICENSE are layered over it. The store does the work (``store.recipe``, the path
behind ``POST /api/create``), so a model made here and one made through the API are the same.
A refused Modelfile or model file leaves nothing behind: no model, and no blob it brought in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral_runtime.commands.models import default_models_dir

if TYPE_CHECKING:
    from corral_runtime.store.layout import ModelStore, StoredModel
    from corral_runtime.store.modelfile import Modelfile
    from corral_runtime.store.names import ModelName

# FROM values that are meant as files even where no such file exists (a typo should say "no
# such file", not "model not found").
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\")
_MODEL_SUFFIXES = (".gguf", ".bin")


HELP_GROUPS = {"create": "local"}  # where `corral --help` lists it (corral_runtime.cli)


def register(subparsers: Any) -> None:
    create = subparsers.add_parser(
        "create",
        help="Create a model from a Modelfile",
        description=(
            "Create a model in the store from a Modelfile: FROM a model in the store or a GGUF "
            "file, with TEMPLATE, SYSTEM, PARAMETER, MESSAGE and LICENSE."
        ),
    )
    create.add_argument("name", help="the new model's name, e.g. mario:latest")
    create.add_argument(
        "-f",
        "--file",
        default="Modelfile",
        metavar="MODELFILE",
        help="the Modelfile (default: ./Modelfile)",
    )
    create.add_argument(
        "--models",
        metavar="DIR",
        help="model store (default: CORRAL_MODELS or ~/.corral/models)",
    )
    create.set_defaults(func=cmd_create)


def names_a_file(base: str) -> bool:
    """Whether FROM's value is written as a file path (rather than a model name)."""
    return base.startswith(_PATH_PREFIXES) or base.lower().endswith(_MODEL_SUFFIXES)


def read_modelfile(path: Path) -> Modelfile:
    """The Modelfile at ``path``, read no further than the size a Modelfile may have."""
    from corral_runtime.store.modelfile import (
        MAX_MODELFILE_BYTES,
        decode_modelfile,
        parse_modelfile,
    )

    with open(path, "rb") as f:
        raw = f.read(MAX_MODELFILE_BYTES + 1)
    return parse_modelfile(decode_modelfile(raw))


def cmd_create(args: argparse.Namespace) -> int:
    from corral_runtime.store.layout import ModelStore
    from corral_runtime.store.names import parse_name

    path = Path(args.file).expanduser()
    store = ModelStore(Path(args.models).expanduser() if args.models else default_models_dir())
    try:
        target = parse_name(args.name)
        try:
            modelfile = read_modelfile(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such file") from None
        for warning in modelfile.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print("gathering model components", flush=True)
        create_from_modelfile(store, target, modelfile, path.parent)
    except (OSError, ValueError, LookupError, RuntimeError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


def create_from_modelfile(
    store: ModelStore, target: ModelName, modelfile: Modelfile, directory: Path
) -> StoredModel:
    """Make ``target`` from ``modelfile`` (FROM relative to ``directory``), printing Ollama's
    create status lines. A GGUF file is landed as every imported file is
    (``ModelStore.import_file``); if the model is then refused, that blob goes again unless
    something else uses it."""
    from corral_runtime.api.options import validate_options
    from corral_runtime.store.modelfile import base_path
    from corral_runtime.store.names import parse_name
    from corral_runtime.store.recipe import Recipe, RecipeError, create_from_recipe
    from corral_runtime.store.refs import PullPin, collect_garbage

    def emit(event: dict[str, Any]) -> None:
        print(event["status"], flush=True)

    def recipe(**source: Any) -> Recipe:
        return Recipe(
            **source,
            template=modelfile.template,
            system=modelfile.system,
            parameters=modelfile.parameters,
            messages=modelfile.messages or None,
            license=modelfile.license,
        )

    # Bounds too, not only types: a model whose parameters every request would refuse is
    # refused now, by the same checks a request's options get.
    validate_options(modelfile.parameters, source="PARAMETER")
    file = base_path(modelfile.base, directory)
    if not file.is_file():
        if names_a_file(modelfile.base):
            raise RecipeError(f"FROM {modelfile.base}: no such file ({file.absolute()})")
        return create_from_recipe(store, target, recipe(base=parse_name(modelfile.base)), emit)
    digest = None
    try:
        with PullPin(store) as pin:  # a collection running meanwhile keeps the new blob
            # Resolved: a link is imported as the file it names (the store refuses links).
            digest = store.import_file(file.resolve()).digest
            pin.add([digest])
            print(f"copying file {digest} 100%", flush=True)
            print("parsing GGUF", flush=True)
            key = file.name if file.name.lower().endswith(".gguf") else f"{file.name}.gguf"
            return create_from_recipe(store, target, recipe(files={key: digest}), emit)
    except BaseException:
        if digest is not None:
            collect_garbage(store, candidates=[digest])
        raise
