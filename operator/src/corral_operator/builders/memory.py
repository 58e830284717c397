"""How much of a runtime pod's memory its models may take: the budget the operator passes to each
pod (the runtime's ``CORRAL_MEMORY_BUDGET_BYTES``), so that a pod evicts its least recently used
model when the next one would not fit in memory, rather than when a count of models is reached.

The operator knows what it asked the kubelet for (the container's memory limit); the runtime
only estimates what a model takes (weights, KV cache, compute). Between the two sits the process
itself (the interpreter, the HTTP server, llama.cpp's library and its allocator's slack), which
the estimates do not count: that is the margin left out of the limit.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

# What the runtime process takes besides its models' estimates: a fixed part (Python, FastAPI,
# llama.cpp loaded, the child process that checks a model file before it is loaded) and a
# share of the limit for allocator slack, which grows with what is allocated.
PROCESS_RESERVE_BYTES = 256 * 1024 * 1024
PROCESS_RESERVE_SHARE = Decimal("0.05")

_SUFFIXES = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
    "E": 1000**6,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "Ei": 1024**6,
}
_QUANTITY = re.compile(
    r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE]([+-]?[0-9]{1,2}))?([KMGTPE]i|[kMGTPE])?$"
)


def memory_bytes(quantity: object) -> int | None:
    """Bytes of a Kubernetes memory quantity (``8Gi``, ``1.5G``, ``2e9``, ``1073741824``), rounded
    up as the kubelet rounds; None for what is no memory quantity (the operator's own default
    comes from its settings, which the CRD's pattern does not check)."""
    match = _QUANTITY.match(str(quantity).strip())
    if match is None:
        return None
    number, exponent, suffix = match.groups()
    try:
        value = Decimal(number) * Decimal(10) ** int(exponent or 0) * _SUFFIXES[suffix or ""]
    except (InvalidOperation, OverflowError):
        return None
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def process_reserve(limit_bytes: int) -> int:
    """Memory kept for the runtime process itself out of a container limit of ``limit_bytes``."""
    return PROCESS_RESERVE_BYTES + int(limit_bytes * PROCESS_RESERVE_SHARE)


def memory_budget(memory_limit: object) -> int | None:
    """The host memory a pod with ``memory_limit`` lets its models take together: the limit
    less the process's reserve (never below zero: a limit too small for the process fits no
    model); None when the limit is no quantity, and the runtime measures its cgroup instead.

    A GPU pod gets the same budget: the runtime counts only what stays in host memory against
    it, and plans what it offloads against the free VRAM it reads at each load (the GPUs' size
    is the node's, not the ModelServer's).
    """
    limit = memory_bytes(memory_limit)
    if limit is None:
        return None
    return max(0, limit - process_reserve(limit))
