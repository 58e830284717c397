"""The ``corral`` command line: one entry point, one module per group of subcommands.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its subcommands
and sets ``func`` on each parser to a callable taking the parsed arguments and returning an exit
code. Modules are imported lazily so that ``corral --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from corral_runtime import __version__

COMMAND_MODULES = (
    "corral_runtime.commands.serve",
    "corral_runtime.commands.models",
    "corral_operator.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Serve and manage local models (Ollama- and OpenAI-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A module whose package is not installed (the operator's, in the runtime image)
            # contributes no commands; any other missing import is a real error.
            if exc.name is None or not (module_name + ".").startswith(exc.name + "."):
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
