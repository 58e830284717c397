"""Model sources (``spec.source``): which scheme, and the name the model is served under.

The CRD's pattern rejects most bad input at the API server; this parser is the second line
(objects stored before a schema change, or edits that pass the pattern but not the rules here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Scheme = Literal["ollama", "hf", "https", "pvc"]

_OLLAMA_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")
_OLLAMA_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_HF = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*\.gguf(@[A-Za-z0-9_./-]+)?")
_PVC = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[A-Za-z0-9_.-]+)+")
_HTTPS = re.compile(r"[^\s/]+(/[^\s]*)?")
DEFAULT_TAG = "latest"
DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"


class InvalidSourceError(ValueError):
    """A ``spec.source`` that names no scheme corral can pull from."""


@dataclass(frozen=True, slots=True)
class Source:
    scheme: Scheme
    location: str
    """The source without its scheme (for ollama: the normalized ``[host/][ns/]model:tag``)."""

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.location}"


def _ollama_name(raw: str) -> str:
    """Validate an Ollama name and return its short display form with the tag filled in."""
    rest, tag = raw, DEFAULT_TAG
    slash, colon = rest.rfind("/"), rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
    parts = rest.split("/")
    if not 1 <= len(parts) <= 3 or not _OLLAMA_PART.fullmatch(tag):
        raise InvalidSourceError(f"invalid Ollama model name {raw!r}")
    host = parts[0] if len(parts) == 3 else DEFAULT_HOST
    if len(parts) == 3 and not _OLLAMA_HOST.fullmatch(host):
        raise InvalidSourceError(f"invalid registry host in {raw!r}")
    for part in parts[-2:] if len(parts) > 1 else parts:
        if not _OLLAMA_PART.fullmatch(part):
            raise InvalidSourceError(f"invalid Ollama model name {raw!r}")
    namespace = parts[-2] if len(parts) > 1 else DEFAULT_NAMESPACE
    model = parts[-1]
    if host != DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def parse_source(raw: str) -> Source:
    """Classify and validate a source; raises InvalidSourceError."""
    if not raw or raw != raw.strip():
        raise InvalidSourceError(f"invalid source {raw!r}")
    scheme, sep, rest = raw.partition("://")
    if not sep:
        return Source("ollama", _ollama_name(raw))
    if scheme == "ollama":
        return Source("ollama", _ollama_name(rest))
    if scheme == "hf" and _HF.fullmatch(rest):
        return Source("hf", rest)
    if scheme == "https" and _HTTPS.fullmatch(rest):
        return Source("https", rest)
    if scheme == "pvc" and _PVC.fullmatch(rest):
        return Source("pvc", rest)
    if scheme in ("ollama", "hf", "https", "pvc"):
        raise InvalidSourceError(f"malformed {scheme}:// source {raw!r}")
    raise InvalidSourceError(
        f"unsupported source scheme {scheme!r} in {raw!r}: use ollama://, hf://, https:// or pvc://"
    )


def served_name(source: Source, model_name: str) -> str:
    """The name the runtime serves the model under.

    Ollama sources keep their Ollama name (``gemma3:270m``), as ``ollama pull`` does; other
    sources have no name of their own, so they are stored under the Model's name.
    """
    if source.scheme == "ollama":
        return source.location
    return f"{model_name}:{DEFAULT_TAG}"
