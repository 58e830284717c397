"""Where a model comes from: parsing ``Model.spec.source`` / ``corral pull SOURCE`` strings.

Accepted forms:

- ``ollama://[host/][namespace/]model[:tag]`` and a bare Ollama name (``llama3.2:1b``), which
  means the Ollama library;
- ``hf://org/repo/path/file.gguf[@revision]`` (a file in a Hugging Face repository);
- ``https://host/…/file.gguf`` (``http://`` too; the puller refuses it unless insecure);
- ``pvc://claim/path/file.gguf`` (a file on a mounted claim) and a local path
  (``/abs/file.gguf``, ``./rel.gguf``, ``~/x.gguf``, ``file:///abs.gguf``, or any string ending in
  ``.gguf`` that has no scheme).

Parsing is pure: nothing here touches the network or the file system.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote, urlsplit

from corral_runtime.settings import PVC_DEFAULT_ROOT
from corral_runtime.store.names import (
    DEFAULT_NAMESPACE,
    DEFAULT_TAG,
    InvalidNameError,
    ModelName,
    parse_name,
)

HF_HOST = "hf.co"

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_HF_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,199}")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class InvalidSourceError(ValueError):
    """A source string that is none of the accepted forms."""


@dataclass(frozen=True, slots=True)
class OllamaSource:
    """A model in an Ollama registry; ``name.host`` is the registry."""

    name: ModelName

    def default_name(self) -> ModelName:
        return self.name


@dataclass(frozen=True, slots=True)
class HuggingFaceSource:
    """One GGUF file in a Hugging Face repository at a revision."""

    org: str
    repo: str
    path: str
    revision: str = "main"

    def url(self, endpoint: str) -> str:
        """The file's download URL under ``endpoint`` (``SourceSettings.hf_endpoint``)."""
        base = endpoint.rstrip("/")
        return (
            f"{base}/{quote(self.org)}/{quote(self.repo)}/resolve/"
            f"{quote(self.revision, safe='')}/{quote(self.path)}"
        )

    def default_name(self) -> ModelName:
        return _safe_name(HF_HOST, self.org, self.repo, _file_tag(PurePosixPath(self.path).name))


@dataclass(frozen=True, slots=True)
class UrlSource:
    """A GGUF file at an ``https://`` (or, when insecure, ``http://``) URL."""

    url: str

    @property
    def secure(self) -> bool:
        return self.url.startswith("https://")

    def default_name(self) -> ModelName:
        parts = urlsplit(self.url)
        stem = PurePosixPath(unquote(parts.path)).name
        return _safe_name(
            parts.netloc.rsplit("@", 1)[-1], DEFAULT_NAMESPACE, _file_tag(stem), DEFAULT_TAG
        )


@dataclass(frozen=True, slots=True)
class LocalSource:
    """A GGUF file on this machine's file system (a ``pvc://`` source resolves to one)."""

    path: str
    claim: str | None = None

    def default_name(self) -> ModelName:
        host = "pvc" if self.claim else "local"
        namespace = self.claim or DEFAULT_NAMESPACE
        return _safe_name(host, namespace, _file_tag(PurePosixPath(self.path).name), DEFAULT_TAG)


Source = OllamaSource | HuggingFaceSource | UrlSource | LocalSource


def parse_source(raw: str, *, pvc_root: str = PVC_DEFAULT_ROOT) -> Source:
    """Parse a source string; raise InvalidSourceError with a message saying what is accepted."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidSourceError("empty model source")
    text = raw.strip()
    scheme_match = _SCHEME.match(text)
    if scheme_match is None:
        if _looks_like_path(text):
            return _local(text)
        return OllamaSource(_ollama_name(text, raw))
    scheme = scheme_match.group(1).lower()
    rest = text[scheme_match.end() :]
    if scheme == "ollama":
        return OllamaSource(_ollama_name(rest, raw))
    if scheme == "hf":
        return _huggingface(rest, raw)
    if scheme in ("https", "http"):
        return _url(text)
    if scheme == "pvc":
        return _pvc(rest, raw, pvc_root)
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise InvalidSourceError(f"invalid source {raw!r}: file:// URLs must be local")
        return _local(unquote(parts.path))
    raise InvalidSourceError(
        f"unsupported source {raw!r}: use ollama://, hf://, https://, pvc://, a local .gguf path,"
        " or an Ollama model name such as llama3.2:1b"
    )


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text.lower().endswith(".gguf")


def _ollama_name(text: str, raw: str) -> ModelName:
    try:
        return parse_name(text)
    except InvalidNameError as exc:
        raise InvalidSourceError(f"invalid source {raw!r}: {exc}") from exc


def _local(path: str) -> LocalSource:
    if not path.lower().endswith(".gguf"):
        raise InvalidSourceError(f"invalid source {path!r}: a local model must be a .gguf file")
    # absolute() and normpath, not resolve(): parsing must not touch the file system.
    return LocalSource(path=os.path.normpath(Path(path).expanduser().absolute()))


def _checked_relpath(path: str, raw: str) -> str:
    segments = path.split("/")
    if not path or any(seg in ("", ".", "..") for seg in segments) or "\\" in path:
        raise InvalidSourceError(f"invalid source {raw!r}: bad file path {path!r}")
    if not path.lower().endswith(".gguf"):
        raise InvalidSourceError(f"invalid source {raw!r}: the file must be a .gguf file")
    return path


def _huggingface(rest: str, raw: str) -> HuggingFaceSource:
    revision = "main"
    if "@" in rest:
        rest, revision = rest.rsplit("@", 1)
        if not _REVISION.fullmatch(revision) or ".." in revision.split("/"):
            raise InvalidSourceError(f"invalid source {raw!r}: bad revision {revision!r}")
    pieces = rest.split("/", 2)
    if len(pieces) != 3:
        raise InvalidSourceError(f"invalid source {raw!r}: expected hf://org/repo/file.gguf")
    org, repo, path = pieces
    for what, value in (("organisation", org), ("repository", repo)):
        if not _HF_ID.fullmatch(value) or value in (".", ".."):
            raise InvalidSourceError(f"invalid source {raw!r}: bad {what} {value!r}")
    return HuggingFaceSource(
        org=org, repo=repo, path=_checked_relpath(path, raw), revision=revision
    )


def _url(text: str) -> UrlSource:
    try:
        parts = urlsplit(text)
        port = parts.port  # validates the port
    except ValueError as exc:
        raise InvalidSourceError(f"invalid source {text!r}: {exc}") from exc
    del port
    if not parts.hostname:
        raise InvalidSourceError(f"invalid source {text!r}: no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidSourceError(f"invalid source {text!r}: credentials in URLs are not accepted")
    if not unquote(parts.path).lower().endswith(".gguf"):
        raise InvalidSourceError(f"invalid source {text!r}: the URL must name a .gguf file")
    return UrlSource(url=text)


def _pvc(rest: str, raw: str, pvc_root: str) -> LocalSource:
    claim, _, path = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", claim):
        raise InvalidSourceError(f"invalid source {raw!r}: bad claim name {claim!r}")
    path = _checked_relpath(path, raw)
    return LocalSource(path=str(PurePosixPath(pvc_root) / claim / path), claim=claim)


def _file_tag(filename: str) -> str:
    stem = filename[: -len(".gguf")] if filename.lower().endswith(".gguf") else filename
    tag = _TAG_UNSAFE.sub("-", stem).strip(".-")
    return (tag or DEFAULT_TAG)[:80]


def _safe_name(host: str, namespace: str, model: str, tag: str) -> ModelName:
    """A store name for a non-Ollama source, with characters Ollama's rules forbid replaced."""
    namespace = _TAG_UNSAFE.sub("-", namespace).replace(".", "-").strip("-")[:80] or "library"
    model = _TAG_UNSAFE.sub("-", model).strip(".-")[:80] or "model"
    tag = _TAG_UNSAFE.sub("-", tag).strip(".-")[:80] or DEFAULT_TAG
    host = re.sub(r"[^A-Za-z0-9_.:-]+", "-", host).strip(".:-")[:350] or "local"
    return parse_name(f"{host}/{namespace}/{model}:{tag}")
