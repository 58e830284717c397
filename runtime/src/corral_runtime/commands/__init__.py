"""Subcommands of the ``corral`` CLI, one module per group (see corral_runtime.cli)."""
