"""``corral deploy|run|ps|models``: the cluster half of the ``corral`` command line.

The runtime's CLI (corral_runtime.cli) imports this module when the operator package is
installed and calls ``register``; the handlers import the Kubernetes client only when they run.
"""

from __future__ import annotations

from corral_operator.cli.commands import register

__all__ = ["register"]
