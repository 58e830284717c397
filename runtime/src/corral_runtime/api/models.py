"""Model-management endpoints of the runtime's Ollama-compatible API.

``/api/pull``, ``/api/delete``, ``/api/copy``, ``/api/create`` and ``HEAD``/``POST
/api/blobs/{digest}``: thin handlers over the content-addressed store on ``app.state.store``;
the loaded-model manager on ``app.state.models`` is asked which digests its models use
(``loaded()``), so that deleting or collecting never removes a blob a loaded model reads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ConfigDict, Field

from corral_runtime.api.deps import SettingsDep, require_management
from corral_runtime.api.errors import ApiError
from corral_runtime.api.streaming import ndjson_response
from corral_runtime.api.text import ValidText
from corral_runtime.settings import RuntimeSettings
from corral_runtime.store.digests import InvalidDigestError, parse_digest
from corral_runtime.store.gguf import GGUFDetails, GGUFError
from corral_runtime.store.layout import (
    MODEL_LAYER,
    BlobState,
    CorruptStoreError,
    Layer,
    ModelNotFoundError,
    ModelStore,
    StoredModel,
)
from corral_runtime.store.limits import DeclaredSizeError, InsufficientSpaceError
from corral_runtime.store.names import InvalidNameError, parse_name
from corral_runtime.store.policy import SourcePolicy, SourceRefusedError
from corral_runtime.store.pull import Puller, PullEvent, PullOptions, model_config
from corral_runtime.store.refs import copy_model, delete_model, manifest_digests
from corral_runtime.store.registry import ManifestNotFoundError
from corral_runtime.store.sources import InvalidSourceError, parse_source
from corral_runtime.store.transfer import PullError, UnsupportedModelError

# Every route here changes (or probes) what the store holds: guarded as management.
router = APIRouter(dependencies=[Depends(require_management)])
_T = TypeVar("_T")


def _store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


def loaded_digests(request: Request) -> set[str]:
    """Every digest a loaded model's manifest names (the manager's ``loaded()`` list)."""
    manager = getattr(request.app.state, "models", None)
    if manager is None:
        return set()
    return {d for m in manager.loaded() for d in manifest_digests(m.stored.manifest)}


def _name(raw: str, field_name: str = "model") -> Any:
    try:
        return parse_name(raw)
    except InvalidNameError as exc:
        raise ApiError(400, f"invalid {field_name} name: {exc}", param=field_name) from exc


def _stream_or_last(
    request: Request,
    stream: bool,
    run: Callable[[Callable[[dict[str, Any]], None]], None],
    cancel: threading.Event | None = None,
) -> Response | Any:
    """Run a blocking job that emits status objects, as NDJSON or (stream false) its result.

    When a streaming client goes away, ``cancel`` is set so the job can stop.
    """

    if not stream:

        async def once() -> dict[str, Any]:
            last: dict[str, Any] = {}

            def keep(doc: dict[str, Any]) -> None:
                last.clear()
                last.update(doc)

            await asyncio.to_thread(run, keep)
            return last

        return once()

    async def events() -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

        def emit(doc: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, doc)

        def work() -> None:
            try:
                run(emit)
            except BaseException as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            else:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        thread = threading.Thread(target=work, name="corral-api-job", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if cancel is not None:
                cancel.set()

    return ndjson_response(request.url.path, events())


# -- /api/pull ---------------------------------------------------------------------------------


class PullRequest(ValidText):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    name: str | None = None  # older clients
    insecure: bool = False
    stream: bool = True


def _pull_error(exc: BaseException) -> ApiError:
    if isinstance(exc, ManifestNotFoundError):
        return ApiError(404, str(exc))
    if isinstance(exc, SourceRefusedError):
        return ApiError(403, str(exc), param="model")
    if isinstance(exc, InsufficientSpaceError):
        return ApiError(507, str(exc))
    if isinstance(
        exc,
        (
            InvalidSourceError,
            InvalidNameError,
            InvalidDigestError,
            DeclaredSizeError,
            GGUFError,
            UnsupportedModelError,
        ),
    ):
        return ApiError(400, str(exc))
    return ApiError(500, str(exc))


def pull_policy(settings: RuntimeSettings) -> SourcePolicy:
    """What pulls through the API may reach (``corral pull`` on the machine is not limited)."""
    return SourcePolicy.restricted(
        allowed_hosts=settings.pull_allowed_hosts,
        allow_insecure=settings.pull_allow_insecure,
        allow_local_paths=settings.pull_allow_local_paths,
    )


@router.post("/api/pull")
async def pull(body: PullRequest, request: Request, settings: SettingsDep) -> Any:
    raw = body.model or body.name
    if not raw:
        raise ApiError(400, "model is required", param="model")
    try:
        source = parse_source(raw)
    except InvalidSourceError as exc:
        raise ApiError(400, str(exc), param="model") from exc
    policy = pull_policy(settings)
    try:
        # (Resolves the source's host name: off the event loop.)
        await asyncio.to_thread(policy.check_source, source, insecure=body.insecure)
    except SourceRefusedError as exc:
        raise _pull_error(exc) from exc
    store = _store(request)
    cancel = threading.Event()
    options = PullOptions(insecure=body.insecure, sources=policy)

    def run(emit: Callable[[dict[str, Any]], None]) -> None:
        def report(event: PullEvent) -> None:
            emit(event.to_json())

        try:
            Puller(store, options, cancel=cancel).pull(source, report=report)
        except (
            PullError,
            CorruptStoreError,
            InvalidNameError,
            InvalidDigestError,
            GGUFError,
        ) as exc:
            raise _pull_error(exc) from exc
        finally:
            cancel.set()

    result = _stream_or_last(request, body.stream, run, cancel)
    if isinstance(result, Response):
        return result
    return await result


# -- /api/delete, /api/copy --------------------------------------------------------------------


class DeleteRequest(ValidText):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    name: str | None = None


@router.delete("/api/delete")
async def delete(body: DeleteRequest, request: Request) -> Response:
    raw = body.model or body.name
    if not raw:
        raise ApiError(400, "model is required", param="model")
    name = _name(raw)
    store = _store(request)
    try:
        await asyncio.to_thread(store.read_manifest, name)
    except ModelNotFoundError as exc:
        raise ApiError(404, f"model '{raw}' not found") from exc
    manager = getattr(request.app.state, "models", None)
    if manager is not None:
        await manager.unload(raw)
    await asyncio.to_thread(delete_model, store, name, loaded_digests(request))
    return Response(status_code=200)


class CopyRequest(ValidText):
    model_config = ConfigDict(extra="ignore")
    source: str
    destination: str


@router.post("/api/copy")
async def copy(body: CopyRequest, request: Request) -> Response:
    source = _name(body.source, "source")
    destination = _name(body.destination, "destination")
    try:
        await asyncio.to_thread(copy_model, _store(request), source, destination)
    except ModelNotFoundError as exc:
        raise ApiError(404, f"model '{body.source}' not found") from exc
    return Response(status_code=200)


# -- /api/create -------------------------------------------------------------------------------


class CreateRequest(ValidText):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    model: str | None = None
    name: str | None = None
    from_: str | None = Field(default=None, alias="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    license: str | list[str] | None = None
    quantize: str | None = None
    stream: bool = True


def _file_layer(store: ModelStore, files: dict[str, str]) -> Layer:
    ggufs = [(name, digest) for name, digest in files.items() if name.lower().endswith(".gguf")]
    if len(ggufs) != 1:
        raise ApiError(400, "files must name exactly one .gguf file")
    filename, raw_digest = ggufs[0]
    try:
        digest = parse_digest(raw_digest)
    except InvalidDigestError as exc:
        raise ApiError(400, str(exc)) from exc
    size = store.blob_size(digest) if store.has_blob(digest) else None
    if size is None:
        raise ApiError(400, f"blob {digest} for {filename} does not exist; upload it first")
    return Layer(MODEL_LAYER, digest, size)


def _checked_model(store: ModelStore, layer: Layer) -> GGUFDetails:
    """A model blob verified and validated before it becomes (part of) a model: else a 400."""
    try:
        return store.check_model_blob(layer.digest, layer.size)
    except GGUFError as exc:
        raise ApiError(400, str(exc)) from exc
    except (ModelNotFoundError, CorruptStoreError) as exc:
        raise ApiError(
            400, f"blob {layer.digest} is missing or does not match its digest; upload it again"
        ) from exc


def _first(given: _T | None, inherited: _T | None) -> _T | None:
    return given if given is not None else inherited


def create_model(
    store: ModelStore, body: CreateRequest, emit: Callable[[dict[str, Any]], None]
) -> StoredModel:
    """Build a model from a Modelfile's fields: from/files, template, system, parameters..."""
    target = _name(body.model or body.name or "")
    if body.quantize:
        raise ApiError(400, "quantization is not supported")
    if body.adapters:
        raise ApiError(400, "LoRA adapters are not supported yet", param="adapters")
    base: StoredModel | None = None
    if body.from_:
        try:
            base = store.get(_name(body.from_, "from"))
        except ModelNotFoundError as exc:
            raise ApiError(404, f"model '{body.from_}' not found") from exc
    if body.files:
        model_layer = _file_layer(store, body.files)
    elif base is not None:
        layer = base.manifest.layer(MODEL_LAYER)
        assert layer is not None
        model_layer = layer
    else:
        raise ApiError(400, "neither 'from' nor 'files' was specified")
    details = _checked_model(store, model_layer)
    emit({"status": f"using existing layer {model_layer.digest}"})
    params = dict(base.params) if base is not None else {}
    params.update(body.parameters or {})
    license_text = "\n".join(body.license) if isinstance(body.license, list) else body.license
    if base is not None and not body.files:
        unsupported = base.manifest.unsupported_parts()
        if unsupported is not None:  # refused rather than carried into a model that ignores them
            raise ApiError(400, f"{body.from_} has {unsupported}, which are not supported yet")
    emit({"status": "writing manifest"})
    model = store.compose_model(
        target,
        model_layer,
        template=_first(body.template, base.template if base else None),
        system=_first(body.system, base.system if base else None),
        params=params,
        messages=_first(body.messages, base.messages if base else None),
        license=_first(license_text, base.license if base else None),
        config=model_config(details),
    )
    emit({"status": "success"})
    return model


@router.post("/api/create")
async def create(body: CreateRequest, request: Request) -> Any:
    if not (body.model or body.name):
        raise ApiError(400, "model is required", param="model")
    _name(body.model or body.name or "")
    store = _store(request)

    def run(emit: Callable[[dict[str, Any]], None]) -> None:
        create_model(store, body, emit)

    result = _stream_or_last(request, body.stream, run)
    if isinstance(result, Response):
        return result
    return await result


# -- /api/blobs --------------------------------------------------------------------------------


def _digest(raw: str) -> str:
    try:
        return parse_digest(raw)
    except InvalidDigestError as exc:
        raise ApiError(400, str(exc)) from exc


@router.head("/api/blobs/{digest}")
async def head_blob(digest: str, request: Request) -> Response:
    """200 for a blob the store holds verified; a corrupt one is as good as absent (404)."""
    state = await asyncio.to_thread(_store(request).check_blob, _digest(digest))
    return Response(status_code=200 if state is BlobState.VALID else 404)


@router.post("/api/blobs/{digest}")
async def post_blob(digest: str, request: Request) -> Response:
    """Store an uploaded blob; its bytes must hash to ``digest`` (else 400, nothing kept)."""
    expected = _digest(digest)
    store = _store(request)
    if await asyncio.to_thread(store.check_blob, expected) is BlobState.VALID:
        return Response(status_code=200)
    await asyncio.to_thread(store.ensure_blobs_dir)
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", dir=store.blobs)
    tmp = Path(tmp_name)
    hasher = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in request.stream():
                hasher.update(chunk)
                await asyncio.to_thread(f.write, chunk)
        actual = "sha256:" + hasher.hexdigest()
        if actual != expected:
            raise ApiError(400, f"digest mismatch, expected {expected}, got {actual}")
        await asyncio.to_thread(_publish, tmp, store.blob_path(expected))
        await asyncio.to_thread(store.record_verified, expected)  # hashed as it arrived
    finally:
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
    return Response(status_code=201)


def _publish(tmp: Path, target: Path) -> None:
    """Rename over whatever is at ``target`` (a corrupt blob or a link is replaced, not used)."""
    tmp.chmod(0o644)
    tmp.replace(target)
