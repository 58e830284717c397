"""What the store holds, described the way ``ollama list`` / ``/api/tags`` / ``ollama show`` do.

Details (family, parameter size, quantization, context length) come from the model blob's GGUF
metadata, read once per model digest and remembered, since blobs never change.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from corral_runtime.store.gguf import GGUFDetails, GGUFError, read_gguf_details
from corral_runtime.store.layout import (
    CorruptStoreError,
    ModelNotFoundError,
    ModelStore,
    StoredModel,
)

_details_cache: dict[str, GGUFDetails | None] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """One row of ``corral list`` / one item of ``/api/tags``."""

    stored: StoredModel
    details: GGUFDetails | None

    @property
    def name(self) -> str:
        return self.stored.name.display

    @property
    def digest(self) -> str:
        """The manifest's digest, as Ollama reports it (``ID`` is its first 12 hex digits)."""
        return self.stored.manifest.digest

    @property
    def modified_at(self) -> str:
        return datetime.fromtimestamp(self.stored.modified, UTC).isoformat()

    def details_json(self) -> dict[str, Any]:
        d = self.details
        family = d.family if d else ""
        return {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family] if family else None,
            "parameter_size": d.parameter_size if d else "",
            "quantization_level": d.quantization_level if d else "",
        }

    def to_tags_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": self.modified_at,
            "size": self.stored.size,
            "digest": self.digest.removeprefix("sha256:"),
            "details": self.details_json(),
        }


def model_details(stored: StoredModel) -> GGUFDetails | None:
    """GGUF details of a model blob; None when the blob is not a readable GGUF."""
    digest = stored.model_digest
    with _cache_lock:
        if digest in _details_cache:
            return _details_cache[digest]
    try:
        details: GGUFDetails | None = read_gguf_details(stored.model_path)
    except (GGUFError, OSError, ValueError):
        details = None
    with _cache_lock:
        _details_cache[digest] = details
    return details


def list_models(store: ModelStore) -> list[ModelEntry]:
    """Every complete model in the store, most recently modified first."""
    entries = []
    for name in store.names():
        with contextlib.suppress(ModelNotFoundError, CorruptStoreError, OSError):
            stored = store.get(name)
            entries.append(ModelEntry(stored, model_details(stored)))
    entries.sort(key=lambda e: e.stored.modified, reverse=True)
    return entries


def format_size(size: int) -> str:
    """Sizes as ``ollama list`` prints them (decimal units)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
