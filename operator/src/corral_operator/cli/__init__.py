"""``corral deploy|run|ps|models``: the cluster half of the ``corral`` command line.

This package names this module in the ``corral.commands`` entry-point group (its
``pyproject.toml``), so ``corral`` (corral_runtime.cli) calls ``register`` wherever the operator
is installed; the handlers import the Kubernetes client only when they run.
"""

from __future__ import annotations

from corral_operator.cli.commands import HELP_GROUPS, register

__all__ = ["HELP_GROUPS", "register"]
