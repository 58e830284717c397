"""The ``corral`` command line: one entry point, its subcommands contributed by the installed
packages.

A package adds subcommands by naming a module in the ``corral.commands`` entry-point group of its
``pyproject.toml``; the module exposes ``register(subparsers)``, which adds its subcommands and
sets ``func`` on each parser to a callable taking the parsed arguments and returning an exit code.
So the runtime names no other package: the operator's cluster commands appear when the operator is
installed (a workstation, the development environment) and are simply absent where it is not (the
runtime image). Modules are imported only to build the parser, and import their heavy
dependencies only when a command runs, so that ``corral --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points

from corral_runtime import __version__

COMMANDS_GROUP = "corral.commands"
RUNTIME_DISTRIBUTION = "corral-runtime"


def command_providers() -> list[EntryPoint]:
    """The installed ``corral.commands`` entry points: the runtime's own first, then the other
    packages', each package's by entry-point name, so the help lists local commands first and
    never changes order between runs (installers do not keep the declared order)."""

    def key(point: EntryPoint) -> tuple[bool, str, str]:
        distribution = point.dist.name if point.dist is not None else ""
        return (distribution != RUNTIME_DISTRIBUTION, distribution, point.name)

    return sorted(entry_points(group=COMMANDS_GROUP), key=key)


def build_parser(providers: Iterable[EntryPoint] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Serve and manage local models (Ollama- and OpenAI-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # A provider that fails to import is a broken installation: say so rather than hide commands.
    for provider in command_providers() if providers is None else providers:
        provider.load().register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code = int(func(args))
        sys.stdout.flush()  # here, where a reader gone away is handled below
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`corral run … | head -1`): nothing more can be said, and that is
        # no failure. Python's docs' remedy: point stdout at devnull so that the flush at exit
        # raises no second BrokenPipeError.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


if __name__ == "__main__":
    sys.exit(main())
