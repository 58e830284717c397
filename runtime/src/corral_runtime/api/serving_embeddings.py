"""Embeddings as both APIs compute them: take a lease on the model (loading it if need be),
embed the inputs on its worker, and cut and normalise the vectors the way clients expect."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from corral_runtime.api.generation import acquire_model
from corral_runtime.api.options import OllamaOptions
from corral_runtime.engine.manager import ModelManager
from corral_runtime.engine.types import EmbeddingResult


@dataclass(frozen=True, slots=True)
class Embedded:
    """The vectors of a request's inputs, and the load it waited for (for Ollama's timings)."""

    result: EmbeddingResult
    load_seconds: float


async def embed(
    manager: ModelManager,
    *,
    name: str,
    options: OllamaOptions,
    keep_alive: float | None,
    inputs: Sequence[str | list[int]],
    truncate: bool,
) -> Embedded:
    """Embed ``inputs`` with the model ``name``; no inputs still loads it (and embeds nothing),
    as Ollama's empty requests do."""
    lease, _ = await acquire_model(manager, name, options, keep_alive)
    async with lease:
        result = (
            await lease.model.worker.embed(inputs, truncate=truncate)
            if inputs
            else EmbeddingResult(vectors=[], prompt_tokens=0)
        )
    return Embedded(result, lease.load_seconds)


def normalized(vectors: list[list[float]], dimensions: int | None) -> list[list[float]]:
    """Each vector cut to its first ``dimensions`` (all when None), then scaled to unit
    length, as Ollama's /api/embed and OpenAI's embeddings answer."""
    return [_l2_normalize(v[:dimensions] if dimensions else v) for v in vectors]


def _l2_normalize(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector
