"""The ``corral`` command line: one entry point, its subcommands contributed by the installed
packages.

A package adds subcommands by naming a module in the ``corral.commands`` entry-point group of its
``pyproject.toml``; the module exposes ``register(subparsers)``, which adds its subcommands and
sets ``func`` on each parser to a callable taking the parsed arguments and returning an exit code.
So the runtime names no other package: the operator's cluster commands appear when the operator is
installed (a workstation, the development environment) and are simply absent where it is not (the
runtime image). Modules are imported only to build the parser, and import their heavy
dependencies only when a command runs, so that ``corral --help`` stays fast.

A module may also say where ``corral --help`` lists its commands: ``HELP_GROUPS`` maps a command
to one of ``GROUP_TITLES``' keys (local, server, cluster). Every command reports an error as one
``Error: …`` line on stderr and exits 1; a usage error (argparse's) exits 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from corral_runtime import __version__

COMMANDS_GROUP = "corral.commands"
RUNTIME_DISTRIBUTION = "corral-runtime"
GROUP_TITLES = {
    "local": "Models on this machine (the store `corral serve` serves):",
    "server": "A running server (`corral serve`, the cluster's gateway, or OLLAMA_HOST):",
    "cluster": "A Kubernetes cluster with corral installed:",
}
OTHER_TITLE = "Other commands:"
# Ollama's order where the commands are Ollama's, then corral's own.
COMMAND_ORDER = (
    "serve", "create", "show", "run", "stop", "pull", "list", "ps", "cp", "rm", "deploy", "models"
)  # fmt: skip


# ``corral serve``'s own module, named as its entry point names it (runtime/pyproject.toml).
SERVE_PROVIDER = EntryPoint("serve", "corral_runtime.commands.serve", COMMANDS_GROUP)


def providers_for(argv: Sequence[str]) -> list[EntryPoint] | None:
    """The one provider ``corral serve`` needs, or None for all of them. A pod's start runs
    ``corral serve``, and every millisecond before its model's load starts is a cold start's:
    finding the other packages' commands and importing their modules (~35 ms here) is not
    needed to parse a ``serve`` command line, whose help and errors are the same without them."""
    return [SERVE_PROVIDER] if argv[:1] == ["serve"] else None


def command_providers() -> list[EntryPoint]:
    """The installed ``corral.commands`` entry points: the runtime's own first, then the other
    packages', each package's by entry-point name, so the help lists local commands first and
    never changes order between runs (installers do not keep the declared order)."""

    def key(point: EntryPoint) -> tuple[bool, str, str]:
        distribution = point.dist.name if point.dist is not None else ""
        return (distribution != RUNTIME_DISTRIBUTION, distribution, point.name)

    return sorted(entry_points(group=COMMANDS_GROUP), key=key)


@dataclass(frozen=True, slots=True)
class CommandHelp:
    """One line of ``corral --help``: a command, its aliases, its help, and its group's key."""

    name: str
    aliases: tuple[str, ...]
    help: str
    group: str


def command_sections(commands: Iterable[CommandHelp]) -> str:
    """The commands listed under their group's title, groups in ``GROUP_TITLES``' order (then
    any other), commands in ``COMMAND_ORDER`` (then by name), one aligned line each."""
    ordered = sorted(
        commands,
        key=lambda c: (
            COMMAND_ORDER.index(c.name) if c.name in COMMAND_ORDER else len(COMMAND_ORDER),
            c.name,
        ),
    )
    labels = {c.name: ", ".join((c.name, *c.aliases)) for c in ordered}
    width = max((len(label) for label in labels.values()), default=0) + 2
    sections = []
    for key, title in [*GROUP_TITLES.items(), ("", OTHER_TITLE)]:
        rows = [c for c in ordered if (c.group if c.group in GROUP_TITLES else "") == key]
        if rows:
            lines = [f"  {labels[c.name]:<{width}}{c.help}".rstrip() for c in rows]
            sections.append("\n".join([title, *lines]))
    return "\n\n".join(sections)


def build_parser(providers: Iterable[EntryPoint] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corral",
        usage="corral [-h] [--version] COMMAND ...",
        description="Serve and manage local models (Ollama- and OpenAI-compatible), on this\n"
        "machine or on a Kubernetes cluster.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'corral COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    # The grouped list (below) replaces argparse's one flat list of commands.
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)
    groups: dict[str, str] = {}
    # A provider that fails to import is a broken installation: say so rather than hide commands.
    for provider in command_providers() if providers is None else providers:
        module = provider.load()
        module.register(subparsers)
        groups.update(getattr(module, "HELP_GROUPS", {}))
    # argparse keeps each command's help on its (private) pseudo-actions, in registration order;
    # a command with aliases is shown as "list (ls)".
    commands = []
    for action in subparsers._choices_actions:
        shown = action.metavar if isinstance(action.metavar, str) else action.dest
        _, _, aliases = shown.partition(" (")
        commands.append(
            CommandHelp(
                name=action.dest,
                aliases=tuple(a.strip() for a in aliases.rstrip(")").split(",") if a.strip()),
                help=action.help or "",
                group=groups.get(action.dest, ""),
            )
        )
    parser.description = f"{parser.description}\n\n{command_sections(commands)}"
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(providers_for(argv))
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
    except OSError as exc:
        # What the machine refused (a store it may not write, a full disk) is the user's to
        # fix, said in one line as every other error, not a traceback.
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
