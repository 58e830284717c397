"""Reading and writing the store: blobs, manifests, and the models they describe."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral_runtime.store.digests import blob_filename, parse_digest, sha256_bytes, sha256_file
from corral_runtime.store.names import ModelName, parse_name

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_PREFIX = "application/vnd.ollama.image."
MODEL_LAYER = LAYER_PREFIX + "model"
TEMPLATE_LAYER = LAYER_PREFIX + "template"
SYSTEM_LAYER = LAYER_PREFIX + "system"
PARAMS_LAYER = LAYER_PREFIX + "params"
LICENSE_LAYER = LAYER_PREFIX + "license"
MESSAGES_LAYER = LAYER_PREFIX + "messages"
PROJECTOR_LAYER = LAYER_PREFIX + "projector"
ADAPTER_LAYER = LAYER_PREFIX + "adapter"


class ModelNotFoundError(LookupError):
    """No manifest for the name, or a manifest whose blobs are missing."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")
        self.name = name


class CorruptStoreError(RuntimeError):
    """A manifest that cannot be parsed, or a blob whose size or content does not match."""


@dataclass(frozen=True, slots=True)
class Layer:
    media_type: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class Manifest:
    config: Layer
    layers: tuple[Layer, ...]
    raw: bytes

    @property
    def digest(self) -> str:
        return sha256_bytes(self.raw)

    def layer(self, media_type: str) -> Layer | None:
        return next((lyr for lyr in self.layers if lyr.media_type == media_type), None)

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        try:
            doc = json.loads(raw)
            config = _layer(doc["config"])
            layers = tuple(_layer(item) for item in doc.get("layers") or [])
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(f"invalid manifest: {exc}") from exc
        return cls(config=config, layers=layers, raw=raw)

    @staticmethod
    def build(config: Layer, layers: list[Layer]) -> bytes:
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "config": config.to_json(),
            "layers": [lyr.to_json() for lyr in layers],
        }
        return json.dumps(doc, indent=None, separators=(",", ":")).encode()


def _layer(item: dict[str, Any]) -> Layer:
    size = item["size"]
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"bad layer size {size!r}")
    return Layer(media_type=str(item["mediaType"]), digest=parse_digest(item["digest"]), size=size)


@dataclass(frozen=True, slots=True)
class StoredModel:
    """A model as the runtime needs it: its name, manifest, and resolved layer contents."""

    name: ModelName
    manifest: Manifest
    model_path: Path
    modified: float
    template: str | None = None
    system: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)
    license: str | None = None

    @property
    def size(self) -> int:
        return sum(lyr.size for lyr in self.manifest.layers) + self.manifest.config.size

    @property
    def model_digest(self) -> str:
        layer = self.manifest.layer(MODEL_LAYER)
        assert layer is not None
        return layer.digest


class ModelStore:
    """An Ollama-layout store rooted at ``root`` (the equivalent of ``~/.ollama/models``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"

    # -- paths -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs / blob_filename(digest)

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests.joinpath(*name.parts)

    def _find_manifest(self, name: ModelName) -> Path | None:
        exact = self.manifest_path(name)
        if exact.is_file():
            return exact
        # Case-insensitive lookup, as Ollama does.
        want = name.key()
        for other, path in self._iter_manifest_paths():
            if other.key() == want:
                return path
        return None

    def _iter_manifest_paths(self) -> Iterator[tuple[ModelName, Path]]:
        if not self.manifests.is_dir():
            return
        for path in sorted(self.manifests.glob("*/*/*/*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            host, namespace, model, tag = path.relative_to(self.manifests).parts
            try:
                yield parse_name(f"{host}/{namespace}/{model}:{tag}"), path
            except ValueError:
                continue

    # -- reading -----------------------------------------------------------------------------

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def read_blob_text(self, digest: str, limit: int = 16 * 1024 * 1024) -> str:
        path = self.blob_path(digest)
        if path.stat().st_size > limit:
            raise CorruptStoreError(f"blob {digest} is larger than {limit} bytes")
        return path.read_text(encoding="utf-8")

    def read_manifest(self, name: ModelName) -> tuple[Manifest, Path]:
        path = self._find_manifest(name)
        if path is None:
            raise ModelNotFoundError(name.display)
        return Manifest.parse(path.read_bytes()), path

    def names(self) -> list[ModelName]:
        return [name for name, _ in self._iter_manifest_paths()]

    def get(self, name: ModelName | str) -> StoredModel:
        """Resolve a name to a model whose model blob exists; raise ModelNotFoundError if not."""
        if isinstance(name, str):
            name = parse_name(name)
        manifest, path = self.read_manifest(name)
        host, namespace, model, tag = path.relative_to(self.manifests).parts
        name = ModelName(host=host, namespace=namespace, model=model, tag=tag)
        model_layer = manifest.layer(MODEL_LAYER)
        if model_layer is None:
            raise CorruptStoreError(f"model '{name.display}' has no model layer")
        model_path = self.blob_path(model_layer.digest)
        if not model_path.is_file():
            raise ModelNotFoundError(name.display)
        if model_path.stat().st_size != model_layer.size:
            raise CorruptStoreError(
                f"blob {model_layer.digest} has {model_path.stat().st_size} bytes, "
                f"the manifest says {model_layer.size}"
            )
        texts: dict[str, str] = {}
        for media in (TEMPLATE_LAYER, SYSTEM_LAYER, PARAMS_LAYER, MESSAGES_LAYER, LICENSE_LAYER):
            layer = manifest.layer(media)
            if layer is not None and self.has_blob(layer.digest):
                texts[media] = self.read_blob_text(layer.digest)
        params = json.loads(texts[PARAMS_LAYER]) if PARAMS_LAYER in texts else {}
        messages = json.loads(texts[MESSAGES_LAYER]) if MESSAGES_LAYER in texts else []
        return StoredModel(
            name=name,
            manifest=manifest,
            model_path=model_path,
            modified=path.stat().st_mtime,
            template=texts.get(TEMPLATE_LAYER),
            system=texts.get(SYSTEM_LAYER),
            params=params if isinstance(params, dict) else {},
            messages=messages if isinstance(messages, list) else [],
            license=texts.get(LICENSE_LAYER),
        )

    # -- writing -----------------------------------------------------------------------------

    def _tempfile(self) -> tuple[int, Path]:
        self.blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.blobs)
        return fd, Path(tmp)

    def put_bytes(self, data: bytes, expected_digest: str | None = None) -> Layer:
        """Store bytes as a blob (atomic: temp file, verify, rename). Returns its digest/size."""
        digest = sha256_bytes(data)
        if expected_digest is not None and parse_digest(expected_digest) != digest:
            raise CorruptStoreError(f"digest mismatch: expected {expected_digest}, got {digest}")
        target = self.blob_path(digest)
        if not target.is_file():
            fd, tmp = self._tempfile()
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                tmp.chmod(0o644)
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
        return Layer(media_type="", digest=digest, size=len(data))

    def import_file(self, source: Path, *, link: bool = True) -> Layer:
        """Copy (or hard-link, when on the same file system) a file into the store as a blob."""
        digest = sha256_file(source)
        target = self.blob_path(digest)
        if not target.is_file():
            fd, tmp = self._tempfile()
            os.close(fd)
            tmp.unlink()
            try:
                linked = False
                if link:
                    try:
                        os.link(source, tmp)
                        linked = True
                    except OSError:
                        linked = False
                if not linked:
                    shutil.copyfile(source, tmp)
                    if sha256_file(tmp) != digest:
                        raise CorruptStoreError(f"{source} changed while it was being copied")
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
        return Layer(media_type="", digest=digest, size=target.stat().st_size)

    def write_manifest(self, name: ModelName, raw: bytes) -> Path:
        """Write a manifest last, atomically, after every blob it names is present."""
        manifest = Manifest.parse(raw)
        for layer in (manifest.config, *manifest.layers):
            if not self.has_blob(layer.digest):
                raise CorruptStoreError(f"manifest names missing blob {layer.digest}")
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            Path(tmp).chmod(0o644)
            Path(tmp).replace(path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def create_model(
        self,
        name: ModelName | str,
        model_file: Path,
        *,
        template: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> StoredModel:
        """Create a model from a GGUF file and optional template/system/params layers."""
        blob = self.import_file(model_file)
        return self.compose_model(
            name,
            Layer(MODEL_LAYER, blob.digest, blob.size),
            template=template,
            system=system,
            params=params,
            config=config,
        )

    def compose_model(
        self,
        name: ModelName | str,
        model_layer: Layer,
        *,
        template: str | None = None,
        system: str | None = None,
        params: dict[str, Any] | None = None,
        messages: list[dict[str, Any]] | None = None,
        license: str | None = None,
        extra_layers: tuple[Layer, ...] = (),
        config: dict[str, Any] | None = None,
    ) -> StoredModel:
        """Write the text layers, the config and (last) the manifest around a stored model blob."""
        if isinstance(name, str):
            name = parse_name(name)
        layers = [
            Layer(model_layer.media_type or MODEL_LAYER, model_layer.digest, model_layer.size),
            *extra_layers,
        ]
        texts = ((TEMPLATE_LAYER, template), (SYSTEM_LAYER, system), (LICENSE_LAYER, license))
        for media, text in texts:
            if text is not None:
                stored = self.put_bytes(text.encode())
                layers.append(Layer(media, stored.digest, stored.size))
        for media, doc in ((PARAMS_LAYER, params), (MESSAGES_LAYER, messages)):
            if doc:
                stored = self.put_bytes(json.dumps(doc, sort_keys=True).encode())
                layers.append(Layer(media, stored.digest, stored.size))
        config_doc: dict[str, Any] = {"model_format": "gguf", "file_type": "", "model_family": ""}
        config_doc.update(config or {})
        config_doc["rootfs"] = {"type": "layers", "diff_ids": [lyr.digest for lyr in layers]}
        stored_config = self.put_bytes(json.dumps(config_doc, sort_keys=True).encode())
        config_layer = Layer(CONFIG_MEDIA_TYPE, stored_config.digest, stored_config.size)
        self.write_manifest(name, Manifest.build(config_layer, layers))
        return self.get(name)
