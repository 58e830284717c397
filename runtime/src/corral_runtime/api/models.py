"""Model-management endpoints of the runtime's Ollama-compatible API.

``/api/pull``, ``/api/delete``, ``/api/copy``, ``/api/create`` and ``HEAD``/``POST
/api/blobs/{digest}``: thin handlers over the content-addressed store on ``app.state.store``;
the loaded-model manager on ``app.state.models`` is asked which digests its models use
(``loaded()``), so that deleting or collecting never removes a blob a loaded model reads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import ConfigDict, Field

from corral_runtime.api.deps import SettingsDep, require_management
from corral_runtime.api.errors import ApiError, pull_error
from corral_runtime.api.streaming import ndjson_response
from corral_runtime.api.text import ValidText
from corral_runtime.settings import RuntimeSettings
from corral_runtime.store.digests import InvalidDigestError, parse_digest
from corral_runtime.store.gguf import GGUFError
from corral_runtime.store.layout import BlobState, CorruptStoreError, ModelNotFoundError, ModelStore
from corral_runtime.store.names import InvalidNameError, parse_name
from corral_runtime.store.policy import SourcePolicy, SourceRefusedError
from corral_runtime.store.pull import Puller, PullEvent, PullOptions
from corral_runtime.store.recipe import Recipe, create_from_recipe
from corral_runtime.store.refs import copy_model, delete_model, manifest_digests
from corral_runtime.store.sources import InvalidSourceError, parse_source
from corral_runtime.store.transfer import PullError
from corral_runtime.store.upload import put_blob

# Every route here changes (or probes) what the store holds: guarded as management.
router = APIRouter(dependencies=[Depends(require_management)])


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


def pull_policy(settings: RuntimeSettings) -> SourcePolicy:
    """What pulls through the API may reach (``corral pull`` on the machine is not limited)."""
    return SourcePolicy.restricted(
        allowed_hosts=settings.pull_allowed_hosts,
        allow_insecure=settings.pull_allow_insecure,
        allow_local_paths=settings.pull_allow_local_paths,
        hf_endpoint=settings.source_settings.hf_endpoint,
    )


@router.post("/api/pull")
async def pull(body: PullRequest, request: Request, settings: SettingsDep) -> Any:
    raw = body.model or body.name
    if not raw:
        raise ApiError(400, "model is required", param="model")
    try:
        source = parse_source(raw, pvc_root=settings.source_settings.pvc_root)
    except InvalidSourceError as exc:
        raise ApiError(400, str(exc), param="model") from exc
    policy = pull_policy(settings)
    try:
        # (Resolves the source's host name: off the event loop.)
        await asyncio.to_thread(policy.check_source, source, insecure=body.insecure)
    except SourceRefusedError as exc:
        raise pull_error(exc) from exc
    store = _store(request)
    cancel = threading.Event()
    options = PullOptions(
        insecure=body.insecure, sources=policy, source_settings=settings.source_settings
    )

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
            raise pull_error(exc) from exc
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


def recipe(body: CreateRequest) -> Recipe:
    """The request's Modelfile fields as the store's recipe (names parsed: a 400 if invalid)."""
    license_text = "\n".join(body.license) if isinstance(body.license, list) else body.license
    return Recipe(
        base=_name(body.from_, "from") if body.from_ else None,
        files=body.files or {},
        adapters=bool(body.adapters),
        quantize=body.quantize,
        template=body.template,
        system=body.system,
        parameters=body.parameters or {},
        messages=body.messages,
        license=license_text,
    )


@router.post("/api/create")
async def create(body: CreateRequest, request: Request) -> Any:
    if not (body.model or body.name):
        raise ApiError(400, "model is required", param="model")
    target = _name(body.model or body.name or "")
    wanted = recipe(body)
    store = _store(request)

    def run(emit: Callable[[dict[str, Any]], None]) -> None:
        create_from_recipe(store, target, wanted, emit)

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
    created = await put_blob(_store(request), _digest(digest), request.stream())
    return Response(status_code=201 if created else 200)
