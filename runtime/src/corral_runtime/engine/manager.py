"""Which models are loaded: loading on first use, keep-alive expiry, LRU eviction.

A request takes a ``Lease`` on a model (loading it if needed) and returns it when done; the
request's keep_alive then decides when the model unloads (0: right away, negative: never). When
a load would exceed the configured number of models or the memory budget, the least recently
used idle models are unloaded first (``plan_room`` decides); when only busy models could make
room the load waits for one to go idle (at most the queue timeout), and a model whose estimate
alone exceeds the budget is refused at once (``ModelTooLargeError``). The budget is the
configured one, else what the container or machine really has (``gpu.probe_memory_budget``);
free VRAM is read again at each load, so a second model plans against what the first left.

Names share a load as Ollama's runners do: names whose weights (and projector and adapters)
and load options are equal (``load_key``), such as an ``/api/copy`` alias or two Modelfiles FROM
the same weights, are served by one worker, one llama.cpp context (``serving_load`` decides).
Each name keeps its own manifest, template, system prompt and parameters, and its own
keep_alive: a name unloads alone when its keep_alive lapses (or ``unload``), and the worker
closes when its last name goes. So keep_alive 0 through one alias drops that name and leaves the
others serving; the worker stays as long as the longest keep_alive of its names (Ollama's runner
takes the last request's keep_alive instead: through a shared runner one alias's keep_alive 0
would unload every name). Memory planning and eviction count a worker once and evict it whole
(evicting one name of it would free nothing).

A model whose decode thread dies (``ModelWorker.failure``) is unloaded and loaded again with
the same settings, with every name it served; until that is done ``unavailable()`` names them
(``/readyz`` answers 503), and a request for one of them waits for the reload.

Shutting down (``abandon_loads``, and ``close``) stops the load under way at llama.cpp's next
progress step (or, before llama.cpp's load, at the next block of its blob's hash, killing its
probe's child) and refuses the loads after it: the requests that waited for them get a
``LoadAbandonedError`` (503 with Retry-After: another server answers), and a server being
stopped does not spend its grace loading a model it would unload moments later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from corral_runtime.durations import MAX_KEEP_ALIVE_SECONDS
from corral_runtime.engine.llama import (
    LoadAbort,
    flash_attention_for,
    flash_attention_name,
    tensor_split_of,
)
from corral_runtime.engine.priority import PriorityPolicy, total_slots
from corral_runtime.engine.probe import probe_model
from corral_runtime.engine.scheduling import (
    MAX_DEFAULT_PARALLEL,
    default_parallel,
    parallel_for_memory,
)
from corral_runtime.engine.types import (
    EngineError,
    LoadOptions,
    QueueFullError,
    QueueTimeoutError,
)
from corral_runtime.engine.worker import LoadConfig, ModelWorker
from corral_runtime.gpu import (
    VRAM_RESERVE_BYTES,
    GpuInfo,
    GpuPlan,
    ModelFootprint,
    ModelShape,
    model_footprint,
    model_shape,
    plan_gpu_layers,
    probe_gpu,
    probe_memory_budget,
)
from corral_runtime.settings import RuntimeSettings
from corral_runtime.store.gguf import GGUFDetails
from corral_runtime.store.layout import ADAPTER_LAYER, PROJECTOR_LAYER, ModelStore, StoredModel

if TYPE_CHECKING:
    from corral_runtime.templates.chat import ChatTemplate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadKey:
    """What makes a load: two names with equal keys are served by one worker (Ollama keys its
    runners by the model file and reloads one whose options differ). The load options are as
    resolved against the server's settings, so leaving one out equals asking for its default."""

    weights: str  # the model blob's digest
    extras: tuple[str, ...]  # projector and adapter blob digests, in manifest order
    num_ctx: int  # as requested (the context may be smaller: the model's trained length)
    num_gpu: int | None  # None: the server's gpu_layers "auto"
    num_thread: int
    num_batch: int


def load_key(stored: StoredModel, resolved: LoadOptions) -> LoadKey:
    """The key of the load serving ``stored`` with ``resolved`` options (each one set)."""
    assert resolved.num_ctx and resolved.num_thread and resolved.num_batch
    extras = tuple(
        layer.digest
        for layer in stored.manifest.layers
        if layer.media_type in (PROJECTOR_LAYER, ADAPTER_LAYER)
    )
    return LoadKey(
        weights=stored.model_digest,
        extras=extras,
        num_ctx=resolved.num_ctx,
        num_gpu=resolved.num_gpu,
        num_thread=resolved.num_thread,
        num_batch=resolved.num_batch,
    )


@dataclass(frozen=True, slots=True)
class LoadChoice:
    """How a name is served: ``drop_current`` first (the name leaves the load it is on), then by
    the load keyed ``serve`` (loaded already), or by a new load if ``serve`` is None."""

    serve: LoadKey | None
    drop_current: bool = False


def serving_load(
    wanted: LoadKey, current: LoadKey | None, current_busy: bool, loads: Collection[LoadKey]
) -> LoadChoice:
    """Which load serves a name asking for ``wanted``, where the name is on the load keyed
    ``current`` (None: not loaded; ``current_busy``: it has requests in flight) and ``loads`` are
    every working load. A name stays on its load while it matches or while the name is busy (its
    requests keep their context; the next idle request moves it); otherwise it shares a load
    with equal key, else a new one is made."""
    if current is not None and (current == wanted or current_busy):
        return LoadChoice(serve=current)
    return LoadChoice(serve=wanted if wanted in loads else None, drop_current=current is not None)


@dataclass(slots=True, eq=False)
class SharedLoad:
    """One worker (one llama.cpp context, its memory) and the names it serves."""

    key: LoadKey
    worker: ModelWorker
    plan: GpuPlan
    names: set[str] = field(default_factory=set)


@dataclass(slots=True, eq=False)
class LoadedModel:
    """A name on a running worker (shared with its aliases, see ``SharedLoad``), and the
    bookkeeping that decides when the name goes."""

    stored: StoredModel
    details: GGUFDetails
    template: ChatTemplate
    shared: SharedLoad
    keep_alive: float
    num_ctx: int  # as requested (the context may be smaller: the model's trained length)
    load: LoadOptions  # as the request asked (None: the server's setting), for a reload
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float = math.inf  # wall-clock seconds; inf: never
    in_flight: int = 0
    _timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return self.stored.name.display

    @property
    def worker(self) -> ModelWorker:
        return self.shared.worker

    @property
    def plan(self) -> GpuPlan:
        return self.shared.plan

    @property
    def n_ctx(self) -> int:
        return self.worker.n_ctx


class ModelTooLargeError(EngineError):
    """A model whose estimate alone exceeds the memory budget: no eviction could make room, so
    the load is refused before llama.cpp allocates anything (answered 500, as Ollama does)."""

    def __init__(self, name: str, needed: int, budget: int) -> None:
        super().__init__(
            f"model requires more system memory ({format_bytes(needed)}) than is available "
            f"({format_bytes(budget)}): {name} does not fit this server's memory budget"
        )
        self.needed = needed
        self.budget = budget


class LoadAbandonedError(QueueFullError):
    """A load not made, or stopped midway, because the server is shutting down. Answered as a
    busy server is (503 with Retry-After), since another server (or this one's successor) can
    serve the request."""

    MESSAGE = "the server is shutting down; try again"


SHUTTING_DOWN = "the server is shutting down"
CALLER_GONE = "the request that asked for it was cancelled"


def format_bytes(count: int) -> str:
    """Bytes as Ollama's errors write them: 1.2 GiB, 512.0 MiB."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


@dataclass(frozen=True, slots=True)
class Resident:
    """What the room decision needs to know of a loaded model."""

    name: str
    host_bytes: int
    busy: bool
    last_used: float


@dataclass(frozen=True, slots=True)
class RoomPlan:
    """What a load does first: unload ``evict`` (least recently used first); then load, or, if
    ``wait``, wait for a busy model to go idle and decide again; ``never_fits``: refuse."""

    evict: tuple[str, ...] = ()
    wait: bool = False
    never_fits: bool = False


def plan_room(
    resident: Sequence[Resident], need: int, budget: int | None, max_models: int
) -> RoomPlan:
    """Make room for a model needing ``need`` bytes of host memory.

    Idle models go, least recently used first, until both the model count and the memory budget
    allow the load. If the memory still does not fit once every idle model is gone, nothing is
    evicted yet and the load waits for a busy model (it becomes idle, then this is decided again:
    no model is unloaded only to learn the load must wait anyway). Over the count with every
    model busy, the load goes ahead (a count is no memory limit). A model needing more than the
    whole budget never fits.
    """
    if budget is not None and need > budget:
        return RoomPlan(never_fits=True)
    used = sum(m.host_bytes for m in resident)
    count = len(resident)
    evict: list[str] = []
    for model in sorted((m for m in resident if not m.busy), key=lambda m: m.last_used):
        memory_over = budget is not None and used + need > budget
        if not (memory_over or count >= max_models):
            break
        evict.append(model.name)
        used -= model.host_bytes
        count -= 1
    if budget is not None and used + need > budget:
        return RoomPlan(wait=True)
    return RoomPlan(evict=tuple(evict))


class Lease:
    """A model in use by one request; ``release()`` exactly once (or use ``async with``)."""

    def __init__(self, manager: ModelManager, model: LoadedModel, load_seconds: float) -> None:
        self.manager = manager
        self.model = model
        self.load_seconds = load_seconds
        self._released = False

    def release(self) -> None:
        # Synchronous on purpose: it runs in the ``finally`` of a stream whose client went away,
        # where any await would be cancelled again.
        if not self._released:
            self._released = True
            self.manager._release(self.model)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def model_template(stored: StoredModel, details: GGUFDetails) -> ChatTemplate:
    # Imported here: jinja2 and the template modules (40-70 ms) are first needed once a load has
    # ended, and imported before it they delay a cold start's load (the API's modules import
    # them meanwhile, beside llama.cpp's load).
    from corral_runtime.templates.chat import select_template

    return select_template(
        gguf_template=details.chat_template,
        layer_template=stored.template,
        architecture=details.architecture,
    )


class ModelManager:
    def __init__(
        self,
        store: ModelStore,
        settings: RuntimeSettings,
        gpu: GpuInfo,
        *,
        on_change: Callable[[ModelManager], None] | None = None,
        on_load: Callable[[str, float], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.gpu = gpu
        self.memory_budget = (
            settings.memory_budget_bytes
            if settings.memory_budget_bytes is not None
            else probe_memory_budget(settings.memory_reserve_bytes)
        )
        log.info(
            "memory budget for models: %s",
            "none" if self.memory_budget is None else format_bytes(self.memory_budget),
        )
        self._models: dict[str, LoadedModel] = {}  # by name
        self._loads: dict[LoadKey, SharedLoad] = {}  # the workers, each serving its names
        self._lock = asyncio.Lock()
        self._idle = asyncio.Event()  # set whenever a model's last request ends
        self._on_change = on_change
        self._on_load = on_load
        self._on_failure = on_failure
        self._expiries: set[asyncio.Task[None]] = set()
        self._recovering: set[str] = set()
        self._recoveries: set[asyncio.Task[None]] = set()
        self._load_switch: LoadAbort | None = None  # the load under way's
        self._abandoned: str | None = None  # why loads are refused now; None: they are made

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    @property
    def loading(self) -> bool:
        """Whether llama.cpp is loading a model now (its load function called, which runs
        without the GIL): ``corral serve`` imports the web stack once the preload's load is
        there, so that those imports run beside llama.cpp's load rather than beside the Python
        work before it (the checks, the bindings' import)."""
        return self._load_switch is not None and self._load_switch.began

    def unavailable(self) -> list[str]:
        """Models that failed and are not loaded again yet: the server cannot serve them now."""
        failed = {m.name for m in self._models.values() if m.worker.failed}
        return sorted(failed | self._recovering)

    def resolve(self, name: str) -> StoredModel:
        """Look a name up in the store (validating it first); raises LookupError/ValueError."""
        return self.store.get(name)

    async def resolve_async(self, name: str) -> StoredModel:
        return await asyncio.to_thread(self.resolve, name)

    async def acquire(
        self,
        model_ref: str | StoredModel,
        *,
        keep_alive: float | None = None,
        load: LoadOptions | None = None,
    ) -> Lease:
        """Take a lease on a model (by name, or already resolved), loading it if needed (or
        sharing the load of another name with the same weights and load options)."""
        if isinstance(model_ref, StoredModel):
            stored = model_ref
        else:
            stored = await self.resolve_async(model_ref)
        load = load or LoadOptions()
        n_ctx = load.num_ctx or self.settings.context_length
        wanted = load_key(stored, self._resolved(load, n_ctx))
        async with self._lock:
            for shared in list(self._loads.values()):
                if shared.worker.failed and (
                    shared.key == wanted or stored.name.display in shared.names
                ):
                    await self._unload_shared(shared)  # Those holding it get its error.
            model = self._models.get(stored.name.display)
            choice = serving_load(
                wanted,
                None if model is None else model.shared.key,
                model is not None and model.in_flight > 0,
                self._loads.keys(),
            )
            if model is not None and choice.drop_current:
                await self._drop(model)  # Other options mean another context, as Ollama.
                model = None
            load_seconds = 0.0
            if model is None and choice.serve is not None:
                model = await self._join(stored, self._loads[choice.serve], n_ctx, load)
            elif model is None:
                model = await self._load(stored, wanted, n_ctx, load)
                load_seconds = model.worker.load_seconds
            model.in_flight += 1
            model.last_used = time.monotonic()
            if keep_alive is not None:
                model.keep_alive = keep_alive
            self._cancel_timer(model)
        return Lease(self, model, load_seconds)

    async def unload(self, name: str) -> bool:
        stored = await self.resolve_async(name)
        async with self._lock:
            model = self._models.get(stored.name.display)
            if model is None:
                return False
            await self._drop(model)  # The worker stays while other names hold it.
            return True

    async def preload(self, names: Sequence[str]) -> None:
        """Load ``names`` in turn before any request asks for them (``--preload``).

        A failure is logged, not raised: a missing or broken model fails its own requests with
        their own error, as it would without a preload, and the server stays up for the
        others. Requests that arrive meanwhile wait on the same load instead of starting their
        own (loads are serialized under the manager's lock).
        """
        for name in names:
            try:
                lease = await self.acquire(name)
            except LoadAbandonedError:
                log.info("abandoned the preload of %s: %s", name, self._abandoned)
                return
            except Exception as exc:  # every failure is the first request's to report
                log.warning("preloading %s failed: %s", name, exc)
                continue
            lease.release()
            log.info("preloaded %s", name)

    def abandon_loads(self, reason: str = SHUTTING_DOWN) -> None:
        """Stop the load under way and refuse every load from now on (shutdown). Only sets
        attributes, so a signal handler may call it; the load stops at its next progress step
        (``LoadAbort``), where its waiter gets a ``LoadAbandonedError``."""
        if self._abandoned is None:
            self._abandoned = reason
        if self._load_switch is not None:
            self._load_switch.abort(reason)

    async def close(self) -> None:
        """Unload every model, once the load under way (abandoned first) has stopped."""
        self.abandon_loads()
        for task in list(self._recoveries):
            task.cancel()
        async with self._lock:
            for shared in list(self._loads.values()):
                await self._unload_shared(shared)

    # -- internals ---------------------------------------------------------------------------

    def _resolved(self, load: LoadOptions, n_ctx: int) -> LoadOptions:
        """``load`` with the server's settings where the request set none."""
        gpu_layers = self.settings.gpu_layers
        return LoadOptions(
            num_ctx=n_ctx,
            num_gpu=load.num_gpu if load.num_gpu is not None else _int_or_none(gpu_layers),
            num_thread=load.num_thread or self.settings.threads or _default_threads(),
            num_batch=load.num_batch or self.settings.batch_size,
        )

    async def _join(
        self, stored: StoredModel, shared: SharedLoad, n_ctx: int, load: LoadOptions
    ) -> LoadedModel:
        """Serve ``stored`` by a worker already loaded for another name: no load, no memory,
        and no second check of the weights (the key names the same blob, whose details the
        names on the worker have)."""
        details = self._models[next(iter(shared.names))].details
        model = self._attach(stored, details, shared, n_ctx, load)
        log.info(
            "%s shares the load of %s", model.name, ", ".join(sorted(shared.names - {model.name}))
        )
        self._changed()
        return model

    def _attach(
        self,
        stored: StoredModel,
        details: GGUFDetails,
        shared: SharedLoad,
        n_ctx: int,
        load: LoadOptions,
    ) -> LoadedModel:
        model = LoadedModel(
            stored=stored,
            details=details,
            template=model_template(stored, details),
            shared=shared,
            keep_alive=self.settings.keep_alive_seconds,
            num_ctx=n_ctx,
            load=load,
        )
        shared.names.add(model.name)
        self._models[model.name] = model
        return model

    async def _load(
        self, stored: StoredModel, key: LoadKey, n_ctx: int, load: LoadOptions
    ) -> LoadedModel:
        """A new worker for ``stored`` with the options ``key`` holds (resolved against the
        server's settings); ``n_ctx`` and ``load`` as the request asked, kept for a reload."""
        if self._abandoned is not None:
            raise LoadAbandonedError()
        switch = LoadAbort()  # what stops the load (``abandon_loads``, a caller gone)
        details = await self._verify(stored, switch)
        context = trained_context(n_ctx, details.context_length)
        weights = stored.model_path.stat().st_size
        shape = shape_of(details)
        # Unset, llama.cpp's choice (off where a device holding layers lacks it): the
        # estimate keeps the attention scores' buffer unless flash attention is certain.
        estimated_flash = (
            flash_attention_for(self.settings.kv_cache_type, self.settings.flash_attention) is True
        )

        def footprint_for(slots: int) -> ModelFootprint:
            return model_footprint(
                weights,
                shape,
                n_ctx=context,
                parallel=slots,
                n_batch=key.num_batch,
                kv_cache_type=self.settings.kv_cache_type,
                flash_attention=estimated_flash,
            )

        if self.gpu.offload_supported:  # What models loaded since the last look left free.
            self.gpu = await asyncio.to_thread(probe_gpu, True)
        requested: Literal["auto"] | int = "auto" if key.num_gpu is None else key.num_gpu
        parallel = self.settings.parallel or slots_for(
            footprint_for(1),
            footprint_for(MAX_DEFAULT_PARALLEL),
            self.memory_budget,
            context,
            vram_budget(requested, self.gpu),
        )
        priority = PriorityPolicy(
            self.settings.priority_aging_seconds,
            {str(name): share for name, share in self.settings.priority_shares.items()},
            self.settings.priority_reserved_slots,
        )
        # The slots only interactive requests take come on top, each with its KV cache.
        slots = total_slots(parallel, priority)
        footprint = footprint_for(slots)
        plan = plan_gpu_layers(requested, footprint, self.gpu)
        await self._make_room(stored.name.display, plan.host_bytes)
        config = LoadConfig(
            model_path=stored.model_path,
            n_ctx=context,
            n_gpu_layers=plan.gpu_layers,
            n_threads=key.num_thread,
            n_batch=key.num_batch,
            flash_attn=self.settings.flash_attention,
            kv_cache_type=self.settings.kv_cache_type,
            batch_invariant=self.settings.batch_invariant,
            warm_turns=self.settings.warm_turns,
            tensor_split=tensor_split_of(self.settings.tensor_split),
            parallel=parallel,
            queue_timeout_s=self.settings.queue_timeout_seconds,
            generation_timeout_s=self.settings.generation_timeout_seconds,
            priority=priority,
            abort=switch,
        )
        worker = ModelWorker(
            stored.name.display,
            config,
            max_pending=slots + self.settings.max_queue,
            on_failure=self._worker_failed,
        )
        await self._start(worker, switch)
        shared = SharedLoad(key, worker, plan)
        self._loads[key] = shared
        model = self._attach(stored, details, shared, n_ctx, load)
        log.info(
            "loaded %s (n_ctx=%d, parallel=%d%s, gpu_layers=%d, kv_cache_type=%s, "
            "flash_attention=%s) in %.2fs",
            model.name,
            model.n_ctx,
            parallel,
            "" if self.settings.parallel else " from the memory budget",
            plan.gpu_layers,
            config.kv_cache_type,
            flash_attention_name(flash_attention_for(config.kv_cache_type, config.flash_attn)),
            worker.load_seconds,
        )
        if self._on_load is not None:
            self._on_load(model.name, worker.load_seconds)
        self._changed()
        return model

    async def _verify(self, stored: StoredModel, switch: LoadAbort) -> GGUFDetails:
        """Check ``stored``'s blob before llama.cpp sees it: against its digest (once per blob)
        and as a valid GGUF, then loaded once in a child process (``probe_model``: a file
        llama.cpp dies on is refused, not fatal); its GGUF details.

        Both run in threads that ask between their steps (a block of the hash, a poll of the
        child) whether the load is abandoned (``abandon_loads``, or the switch, which a
        cancelled caller sets): then the hash stops with nothing recorded (the next load
        verifies the blob again), or the child is killed, and a ``LoadAbandonedError`` is
        raised. So a shutdown during the first verification of a multi-GB blob does not wait
        for the whole hash, and no probe outlives the load.
        """

        def stop() -> None:  # in the threads; reading the attributes is all it does
            if load_stop_reason(self._abandoned, switch) is not None:
                raise LoadAbandonedError()

        try:
            details = await asyncio.to_thread(self.store.check_model, stored, stop)
            await asyncio.to_thread(probe_model, self.store, stored, stop)
        except LoadAbandonedError:
            why = load_stop_reason(self._abandoned, switch)
            log.info("abandoned the verification of %s: %s", stored.name.display, why)
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: the thread stops at its next step
                switch.abort(CALLER_GONE)
                log.info("stopping the verification of %s: %s", stored.name.display, CALLER_GONE)
            raise
        return details

    async def _start(self, worker: ModelWorker, switch: LoadAbort) -> None:
        """Load ``worker``'s model, whose load ``switch`` stops, unless loads are abandoned, or
        until they are (``abandon_loads``): then the worker is closed, having freed what it
        took, and the caller gets a ``LoadAbandonedError``. A load whose caller is cancelled
        (its client went away) stops too, since its worker would be closed once loaded."""
        # The switch first: ``abandon_loads`` (a signal handler, between any two bytecodes)
        # marks the manager, then sets the switch it finds, so one of them is seen.
        self._load_switch = switch
        try:
            if self._abandoned is not None:
                raise LoadAbandonedError()
            await worker.start()
        except LoadAbandonedError:
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: nothing will take the model
                switch.abort(CALLER_GONE)
                log.info("stopping the load of %s: %s", worker.name, CALLER_GONE)
            await worker.close()
            if switch.reason is not None and isinstance(exc, EngineError):
                log.info("abandoned the load of %s: %s", worker.name, switch.reason)
                raise LoadAbandonedError() from exc
            raise
        finally:
            self._load_switch = None

    async def _make_room(self, name: str, need: int) -> None:
        """Evict, wait or refuse as ``plan_room`` says (called holding the lock: the wait keeps
        it, so no other load slips in between a model going idle and its eviction). A worker
        counts once however many names it serves, busy while any of them is, used when the
        latest of them was; evicting it unloads all its names."""
        timeout = self.settings.queue_timeout_seconds
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            by_label = {", ".join(sorted(s.names)): s for s in self._loads.values()}
            resident = [
                Resident(
                    label,
                    shared.plan.host_bytes,
                    any(self._models[n].in_flight > 0 for n in shared.names),
                    max(self._models[n].last_used for n in shared.names),
                )
                for label, shared in by_label.items()
            ]
            room = plan_room(resident, need, self.memory_budget, self.settings.max_loaded_models)
            if room.never_fits:
                assert self.memory_budget is not None
                raise ModelTooLargeError(name, need, self.memory_budget)
            for victim in room.evict:
                log.info("evicting %s (least recently used) to load %s", victim, name)
                await self._unload_shared(by_label[victim])
            if not room.wait:
                return
            log.info("waiting for a busy model to go idle to make room for %s", name)
            self._idle.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise QueueTimeoutError()
            try:
                await asyncio.wait_for(self._idle.wait(), remaining)
            except TimeoutError:
                raise QueueTimeoutError() from None

    def _release(self, model: LoadedModel) -> None:
        model.in_flight -= 1
        model.last_used = time.monotonic()
        if model.in_flight > 0 or self._models.get(model.name) is not model:
            return
        self._idle.set()  # A load waiting for room may evict it now.
        if model.keep_alive == 0:
            self._spawn_expiry(model)
            return
        self._schedule_expiry(model)

    def _schedule_expiry(self, model: LoadedModel) -> None:
        self._cancel_timer(model)
        if never_expires(model.keep_alive):
            model.expires_at = math.inf
            return
        model.expires_at = time.time() + model.keep_alive
        loop = asyncio.get_running_loop()
        model._timer = loop.call_later(model.keep_alive, self._spawn_expiry, model)

    def _spawn_expiry(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._expire(model))
        self._expiries.add(task)
        task.add_done_callback(self._expiries.discard)

    async def _expire(self, model: LoadedModel) -> None:
        async with self._lock:
            if model.in_flight == 0 and self._models.get(model.name) is model:
                log.info("unloading %s (keep_alive %.0fs)", model.name, model.keep_alive)
                await self._drop(model)

    def _cancel_timer(self, model: LoadedModel) -> None:
        if model._timer is not None:
            model._timer.cancel()
            model._timer = None

    def _detach(self, model: LoadedModel) -> bool:
        """Take the name off its worker; True when that was the worker's last name."""
        self._cancel_timer(model)
        self._models.pop(model.name, None)
        model.shared.names.discard(model.name)
        if model.shared.names:
            return False
        if self._loads.get(model.shared.key) is model.shared:
            del self._loads[model.shared.key]
        return True

    async def _drop(self, model: LoadedModel) -> None:
        """Unload one name; its worker closes only if no other name holds it."""
        if self._detach(model):
            await model.worker.close()
        self._changed()

    async def _unload_shared(self, shared: SharedLoad) -> None:
        """Close a worker, unloading every name it serves."""
        for name in list(shared.names):
            self._detach(self._models[name])
        self._loads.pop(shared.key, None)
        await shared.worker.close()
        self._changed()

    def _worker_failed(self, worker: ModelWorker) -> None:
        """A decode thread died (called on the event loop): count it against each name it
        served, and reload it."""
        shared = next((s for s in self._loads.values() if s.worker is worker), None)
        if shared is None:
            return
        for name in sorted(shared.names):
            if self._on_failure is not None:
                self._on_failure(name)
            self._recovering.add(name)
        task = asyncio.get_running_loop().create_task(self._recover(shared))
        self._recoveries.add(task)
        task.add_done_callback(self._recoveries.discard)

    async def _recover(self, shared: SharedLoad) -> None:
        names = sorted(shared.names)
        try:
            async with self._lock:
                if self._loads.get(shared.key) is not shared:
                    return  # A request has already replaced it.
                # Its names now: one may have expired since it failed.
                members = [self._models[name] for name in sorted(shared.names)]
                await self._unload_shared(shared)
                # A name with keep_alive 0 would be unloaded once idle anyway.
                keep = [m for m in members if m.keep_alive != 0]
                if not keep:
                    return
                log.warning(
                    "reloading %s after its decode thread died", ", ".join(m.name for m in keep)
                )
                first = keep[0]
                try:
                    fresh = await self._load(first.stored, shared.key, first.num_ctx, first.load)
                except Exception:
                    log.exception("reloading %s failed; the next request loads it", first.name)
                    return
                again = [fresh] + [
                    self._attach(m.stored, m.details, fresh.shared, m.num_ctx, m.load)
                    for m in keep[1:]
                ]
                for old, new in zip(keep, again, strict=True):
                    new.keep_alive = old.keep_alive
                    self._schedule_expiry(new)
                self._changed()
        finally:
            self._recovering.difference_update(names)

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self)


def load_stop_reason(abandoned: str | None, switch: LoadAbort) -> str | None:
    """Why a load stops (None: it goes on): every load is abandoned (``abandoned``, the
    shutdown's reason), or its own ``switch`` was set."""
    return abandoned if abandoned is not None else switch.reason


def shape_of(details: GGUFDetails) -> ModelShape:
    """The header values a memory estimate is made of."""
    return model_shape(
        block_count=details.block_count,
        embedding_length=details.embedding_length,
        head_count=details.head_count,
        head_count_kv=details.head_count_kv,
        key_length=details.key_length,
        value_length=details.value_length,
        feed_forward_length=details.feed_forward_length,
        vocab_size=details.vocab_size,
    )


def slots_for(
    one_slot: ModelFootprint,
    most_slots: ModelFootprint,
    budget: int | None,
    n_ctx: int,
    vram: int | None = None,
) -> int:
    """A model's slots when the server sets none: from the memory budget
    (``parallel_for_memory``: one slot's KV cache each, beside the weights and the compute
    graph of the most slots), else from the context alone; and where the model is offloaded
    to a GPU with ``vram`` bytes to plan against, no more than that memory holds by the same
    rule (the KV cache of offloaded layers lives there, and slots it cannot hold would push
    layers back to the CPU)."""
    fixed = most_slots.weights_bytes + most_slots.graph_bytes
    if budget is None:
        slots = default_parallel(n_ctx)
    else:
        slots = parallel_for_memory(one_slot.kv_cache_bytes, budget, fixed)
    if vram is not None:
        slots = min(slots, parallel_for_memory(one_slot.kv_cache_bytes, vram, fixed))
    return slots


def vram_budget(requested: Literal["auto"] | int, gpu: GpuInfo) -> int | None:
    """The VRAM a model's default slots are planned against: the free VRAM less the reserve,
    where layers are offloaded at all (``gpu_layers`` auto, negative or above 0) to a usable
    GPU; None otherwise."""
    if not gpu.usable or requested == 0:
        return None
    return max(0, gpu.free_vram_bytes - VRAM_RESERVE_BYTES)


def trained_context(requested: int, trained: int | None) -> int:
    """The context a model loads with: as requested, but no longer than it was trained for
    (as Ollama does; llama.cpp would allocate the memory and then degrade past it)."""
    return min(requested, trained) if trained and trained > 0 else requested


def never_expires(keep_alive: float) -> bool:
    """Whether a keep_alive keeps its model loaded forever: negative, not finite, or longer
    than a timestamp should be asked to hold."""
    return keep_alive < 0 or not math.isfinite(keep_alive) or keep_alive > MAX_KEEP_ALIVE_SECONDS


def _int_or_none(gpu_layers: Literal["auto"] | int) -> int | None:
    return None if gpu_layers == "auto" else gpu_layers


def _default_threads() -> int:
    # llama.cpp decodes fastest with one thread per physical core; all cores is a fair default.
    return max(1, len(os.sched_getaffinity(0)))
