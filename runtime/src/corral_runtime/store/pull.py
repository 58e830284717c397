"""Pulling a model from any source into the store, reporting progress as Ollama does.

Every source ends the same way: blobs in ``blobs/``, then (last) a manifest naming them, so the
runtime cannot tell an ``ollama://`` model from an ``hf://``, ``https://`` or local one. Progress
events carry Ollama's status messages (``pulling manifest``, ``pulling <12 hex>``, ``verifying
sha256 digest``, ``writing manifest``, ``success``).
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral_runtime.settings import SourceSettings
from corral_runtime.store.digests import parse_digest
from corral_runtime.store.download import BlobDownloader, BlobRequest
from corral_runtime.store.gguf import GGUFDetails
from corral_runtime.store.layout import (
    LICENSE_LAYER,
    MESSAGES_LAYER,
    MODEL_LAYER,
    PARAMS_LAYER,
    SYSTEM_LAYER,
    TEMPLATE_LAYER,
    Layer,
    Manifest,
    ModelStore,
    StoredModel,
)
from corral_runtime.store.limits import check_blob_size, check_manifest, check_space
from corral_runtime.store.names import ModelName
from corral_runtime.store.policy import SourcePolicy
from corral_runtime.store.refs import PullPin, manifest_digests
from corral_runtime.store.registry import RegistryClient
from corral_runtime.store.sources import (
    HuggingFaceSource,
    LocalSource,
    OllamaSource,
    Source,
    parse_source,
)
from corral_runtime.store.transfer import (
    MAX_REDIRECTS,
    PullError,
    RetryPolicy,
    UnsupportedModelError,
    check_scheme,
    redirect_target,
)

USER_AGENT = "corral-puller"


@dataclass(frozen=True, slots=True)
class PullEvent:
    """One progress line, in the shape of Ollama's /api/pull stream."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": self.status}
        if self.digest is not None:
            doc["digest"] = self.digest
        if self.total is not None:
            doc["total"] = self.total
        if self.completed is not None:
            doc["completed"] = self.completed
        return doc


Reporter = Callable[[PullEvent], None]


@dataclass
class PullOptions:
    insecure: bool = False
    workers: int = 4
    chunk_size: int = 16 * 1024 * 1024
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    fsync: bool = True
    # What a Model sets around the weights (its template/system/params/messages/license): the
    # layers of a GGUF-only source, the registry model's own layers replaced.
    template: str | None = None
    system: str | None = None
    params: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    license: str | None = None
    expected_digest: str | None = None
    connect_timeout: float = 15.0
    # What the pull may reach: everything for the CLI; a server passes its restricted policy.
    sources: SourcePolicy = field(default_factory=SourcePolicy)
    # Where hf:// and pvc:// sources point, and whether a proxy is configured.
    source_settings: SourceSettings = field(default_factory=SourceSettings)


def pulling_status(digest: str) -> str:
    return f"pulling {digest.removeprefix('sha256:')[:12]}"


def model_config(details: GGUFDetails) -> dict[str, Any]:
    """Config-blob fields Ollama fills from the GGUF."""
    return {
        "model_format": "gguf",
        "model_family": details.family,
        "model_families": [details.family] if details.family else [],
        "model_type": details.parameter_size,
        "file_type": details.quantization_level,
    }


class Puller:
    """Pulls sources into one store; safe to use from several threads and processes at once."""

    def __init__(
        self,
        store: ModelStore,
        options: PullOptions | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.options = options or PullOptions()
        self.cancel = cancel

    def _client(self) -> httpx.Client:
        timeout = httpx.Timeout(
            self.options.policy.stall_timeout, connect=self.options.connect_timeout
        )
        return httpx.Client(
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
            limits=httpx.Limits(max_connections=self.options.workers + 4),
            # Every request the client sends (each redirect hop, token realms) meets the policy.
            event_hooks={"request": [self._check_request]},
        )

    def _check_request(self, request: httpx.Request) -> None:
        self.options.sources.check_url(str(request.url))

    def pull(
        self, source: Source | str, name: ModelName | None = None, report: Reporter | None = None
    ) -> StoredModel:
        where = self.options.source_settings
        src = parse_source(source, pvc_root=where.pvc_root) if isinstance(source, str) else source
        self.options.sources.check_source(src, insecure=self.options.insecure)
        emit = report or (lambda event: None)
        target = name or src.default_name()
        with self._client() as client:
            downloader = BlobDownloader(
                self.store,
                client,
                insecure=self.options.insecure,
                workers=self.options.workers,
                chunk_size=self.options.chunk_size,
                policy=self.options.policy,
                fsync=self.options.fsync,
                proxied=where.proxied,
            )
            if isinstance(src, OllamaSource):
                return self._pull_registry(src, target, client, downloader, emit)
            if isinstance(src, LocalSource):
                return self._import_local(src, target, emit)
            url = src.url(where.hf_endpoint) if isinstance(src, HuggingFaceSource) else src.url
            return self._pull_file(url, target, client, downloader, emit)

    # -- ollama:// ---------------------------------------------------------------------------

    def _pull_registry(
        self,
        src: OllamaSource,
        target: ModelName,
        client: httpx.Client,
        downloader: BlobDownloader,
        emit: Reporter,
    ) -> StoredModel:
        registry = RegistryClient(
            client, src.name.host, insecure=self.options.insecure, policy=self.options.policy
        )
        emit(PullEvent("pulling manifest"))
        manifest = registry.fetch_manifest(src.name)
        # The registry's numbers are checked before anything is planned or downloaded.
        missing = [
            layer.digest
            for layer in (manifest.config, *manifest.layers)
            if not self.store.has_blob(layer.digest)
        ]
        check_manifest(manifest, src.name.display, missing, self._free_bytes())
        unsupported = manifest.unsupported_parts()
        if unsupported is not None:
            raise UnsupportedModelError(
                f"{src.name.display} has {unsupported}, which are not supported yet"
            )
        model_layer = manifest.layer(MODEL_LAYER)
        if model_layer is None:
            raise PullError(f"{src.name.display}: the manifest has no model layer")
        pinned = self.options.expected_digest
        if pinned is not None and parse_digest(pinned) not in (manifest.digest, model_layer.digest):
            raise PullError(
                f"{src.name.display}: digest {manifest.digest} (model "
                f"{model_layer.digest}) does not match the pinned {pinned}"
            )
        with PullPin(self.store) as pin:
            pin.add(manifest_digests(manifest))
            for layer in (*manifest.layers, manifest.config):
                self._fetch_layer(
                    downloader,
                    registry.blob_url(src.name, layer.digest),
                    layer,
                    registry.auth_headers,
                    emit,
                )
            emit(PullEvent("verifying sha256 digest"))
            self._verify_sizes(manifest)
            # Refused here (not at first use) when it is not a model llama.cpp can be given.
            self.store.check_model_blob(model_layer.digest, model_layer.size)
            emit(PullEvent("writing manifest"))
            if self._has_overrides():
                self._write_with_overrides(target, manifest)
            else:
                self.store.write_manifest(target, manifest.raw)
        emit(PullEvent("success"))
        return self.store.get(target)

    def _free_bytes(self) -> int:
        """Free space on the store's filesystem (its root, before the first blob exists)."""
        where = self.store.blobs if self.store.blobs.is_dir() else self.store.root
        while not where.exists() and where != where.parent:
            where = where.parent
        return shutil.disk_usage(where).free

    def _has_overrides(self) -> bool:
        opts = self.options
        given = (opts.template, opts.system, opts.messages, opts.license)
        return any(value is not None for value in given) or bool(opts.params)

    def _write_with_overrides(self, target: ModelName, manifest: Manifest) -> None:
        """The registry's model with the template/system/params/messages/license a Model
        resource sets (the registry's own where it sets none)."""
        opts = self.options
        texts = {TEMPLATE_LAYER: opts.template, SYSTEM_LAYER: opts.system}
        params: dict[str, Any] = {}
        layer = manifest.layer(PARAMS_LAYER)
        if layer is not None:
            loaded = json.loads(self.store.read_blob_text(layer.digest))
            params = loaded if isinstance(loaded, dict) else {}
        params.update(opts.params or {})
        for media in (TEMPLATE_LAYER, SYSTEM_LAYER):
            current = manifest.layer(media)
            if texts[media] is None and current is not None:
                texts[media] = self.store.read_blob_text(current.digest)
        model_layer = manifest.layer(MODEL_LAYER)
        assert model_layer is not None
        replaced = {MODEL_LAYER, TEMPLATE_LAYER, SYSTEM_LAYER, PARAMS_LAYER}
        # The registry's messages and license layers (a model may have several licenses) stay
        # unless the Model sets its own.
        if opts.messages is not None:
            replaced.add(MESSAGES_LAYER)
        if opts.license is not None:
            replaced.add(LICENSE_LAYER)
        kept = tuple(lyr for lyr in manifest.layers if lyr.media_type not in replaced)
        config: dict[str, Any] = json.loads(self.store.read_blob_text(manifest.config.digest))
        config.pop("rootfs", None)
        self.store.compose_model(
            target,
            model_layer,
            template=texts[TEMPLATE_LAYER],
            system=texts[SYSTEM_LAYER],
            params=params,
            messages=opts.messages,
            license=opts.license,
            extra_layers=kept,
            config=config,
        )

    def _fetch_layer(
        self,
        downloader: BlobDownloader,
        url: str,
        layer: Layer,
        headers: Callable[[bool], dict[str, str]],
        emit: Reporter,
    ) -> None:
        status = pulling_status(layer.digest)

        def progress(done: int, total: int) -> None:
            if self.cancel is not None and self.cancel.is_set():
                raise PullError("pull cancelled")
            emit(PullEvent(status, layer.digest, total, done))

        emit(PullEvent(status, layer.digest, layer.size, 0))
        downloader.download(BlobRequest(url, layer.digest, layer.size, headers), progress)

    def _verify_sizes(self, manifest: Manifest) -> None:
        # Content was verified as it arrived; a blob that was already present is checked here.
        for layer in (manifest.config, *manifest.layers):
            size = self.store.blob_size(layer.digest)
            if size != layer.size:
                raise PullError(
                    f"blob {layer.digest} has {size} bytes, the manifest says {layer.size}"
                )

    # -- hf:// and https:// ------------------------------------------------------------------

    def _pull_file(
        self,
        url: str,
        target: ModelName,
        client: httpx.Client,
        downloader: BlobDownloader,
        emit: Reporter,
    ) -> StoredModel:
        emit(PullEvent("pulling manifest"))
        digest, size = self._known_digest(client, url)
        if self.options.expected_digest is not None:
            digest = self.options.expected_digest
        if size is not None:
            check_blob_size(size, url)
            if digest is None or not self.store.has_blob(digest):
                check_space(size, self._free_bytes())
        with PullPin(self.store) as pin:
            if digest is not None:
                pin.add([digest])
            status = pulling_status(digest) if digest else "pulling model"

            def progress(done: int, total: int) -> None:
                if self.cancel is not None and self.cancel.is_set():
                    raise PullError("pull cancelled")
                emit(PullEvent(status, digest, total, done))

            blob = downloader.download(BlobRequest(url, digest, size), progress)
            pin.add([blob.digest])
            emit(PullEvent("verifying sha256 digest"))
            return self._compose(target, blob, pin, emit)

    def _known_digest(self, client: httpx.Client, url: str) -> tuple[str | None, int | None]:
        """The sha256 and size a server advertises (Hugging Face's X-Linked-Etag/-Size).

        Hugging Face puts them on the redirect to its CDN, so every hop is looked at.
        """
        digest: str | None = None
        size: int | None = None
        headers: dict[str, str] = {}
        try:
            for _ in range(MAX_REDIRECTS + 1):
                check_scheme(url, self.options.insecure)
                response = client.head(url, headers=headers, follow_redirects=False)
                digest = digest or digest_from_headers(response.headers)
                if response.status_code in (301, 302, 303, 307, 308):
                    size = size or size_from_headers(response.headers, linked_only=True)
                    url, headers = redirect_target(
                        url, response.headers["location"], headers, self.options.insecure
                    )
                    continue
                if response.status_code == 404:
                    raise PullError(f"{url}: file does not exist")
                if response.status_code >= 400:
                    return digest, size
                return digest, size or size_from_headers(response.headers)
        except httpx.HTTPError as exc:
            raise PullError(f"{url}: {exc}") from exc
        raise PullError(f"too many redirects fetching {url}")

    # -- local files -------------------------------------------------------------------------

    def _import_local(self, src: LocalSource, target: ModelName, emit: Reporter) -> StoredModel:
        path = Path(src.path)
        if not path.is_file():
            raise PullError(f"{path}: no such file")
        emit(PullEvent("pulling model", None, path.stat().st_size, 0))
        with PullPin(self.store) as pin:
            blob = self.store.import_file(path)
            pin.add([blob.digest])
            emit(PullEvent(pulling_status(blob.digest), blob.digest, blob.size, blob.size))
            emit(PullEvent("verifying sha256 digest"))
            return self._compose(target, blob, pin, emit)

    def _compose(self, target: ModelName, blob: Layer, pin: PullPin, emit: Reporter) -> StoredModel:
        details = self.store.check_model_blob(blob.digest, blob.size)
        emit(PullEvent("writing manifest"))
        model = self.store.compose_model(
            target,
            Layer(MODEL_LAYER, blob.digest, blob.size),
            template=self.options.template,
            system=self.options.system,
            params=self.options.params,
            messages=self.options.messages,
            license=self.options.license,
            config=model_config(details),
        )
        emit(PullEvent("success"))
        return model


def digest_from_headers(headers: httpx.Headers) -> str | None:
    for key in ("x-linked-etag", "x-content-sha256", "etag"):
        value = headers.get(key, "").strip().removeprefix("W/").strip('"').lower()
        value = value.removeprefix("sha256:")
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
            return f"sha256:{value}"
    return None


def size_from_headers(headers: httpx.Headers, linked_only: bool = False) -> int | None:
    for key in ("x-linked-size",) if linked_only else ("x-linked-size", "content-length"):
        value = headers.get(key, "")
        if value.isdigit():
            return int(value)
    return None
