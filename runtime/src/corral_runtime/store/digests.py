"""Content digests: ``sha256:<64 hex>`` on the wire, ``sha256-<64 hex>`` as a file name.

Anything else is rejected before a path is built from it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
CHUNK = 4 * 1024 * 1024

# Asked between the steps of a long check (a block of a hash): it raises to stop the check,
# as a model load abandoned while its multi-GB blob is verified for the first time does.
StopCheck = Callable[[], None]


class InvalidDigestError(ValueError):
    """A digest that is not sha256 followed by 64 lowercase hex digits."""


def parse_digest(raw: str) -> str:
    """Return the canonical ``sha256:<hex>`` form of a digest in either spelling."""
    match = _DIGEST.fullmatch(raw) if isinstance(raw, str) else None
    if match is None:
        raise InvalidDigestError(f"invalid digest {raw!r}: expected sha256:<64 hex digits>")
    return f"sha256:{match.group(1)}"


def blob_filename(digest: str) -> str:
    return parse_digest(digest).replace(":", "-", 1)


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    with Path(path).open("rb") as f:
        return sha256_stream(f)


def sha256_stream(f: BinaryIO, stop: StopCheck | None = None) -> str:
    """The digest of what is left to read in ``f``; ``stop`` is asked before each block (what
    it raises ends the hash there)."""
    h = hashlib.sha256()
    while True:
        if stop is not None:
            stop()
        chunk = f.read(CHUNK)
        if not chunk:
            break
        h.update(chunk)
    return "sha256:" + h.hexdigest()
