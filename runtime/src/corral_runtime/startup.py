"""The engine's start: the store, the model manager and the preload, before the web stack.

``corral serve`` starts the engine first, on the event loop that will serve, and imports
FastAPI, uvicorn and the API modules once the preload's load has begun (``Engine.load_begun``),
in a thread: a preloaded model's load runs in llama.cpp's C code without the GIL, so those
imports (about a second on a cold container) overlap the load instead of coming before it or
slowing the checks before it, and closes it once uvicorn has shut down; shut down
while the preload is still loading, the load is abandoned (``ModelManager.abandon_loads``) and
the process ends as any shutdown does. ``create_app`` starts and closes the engine in its
lifespan when it was given none (tests, and ``CORRAL_EARLY_ENGINE_IMPORT=false``).

Nothing here imports the web stack, so that importing this module costs only the engine's own
imports; nor the metrics (prometheus_client, ~15 ms), which ``corral serve``'s engine makes at
their first use (``EngineMetrics``): the web stack's import, beside the preload's load.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from corral_runtime.engine.bindings import import_bindings
from corral_runtime.engine.manager import ModelManager
from corral_runtime.gpu import GpuInfo
from corral_runtime.settings import RuntimeSettings, default_models_dir
from corral_runtime.store.layout import ModelStore
from corral_runtime.testmodel import TestModelUnavailableError, ensure_test_model

if TYPE_CHECKING:
    from corral_runtime.metrics import RuntimeMetrics

log = logging.getLogger(__name__)

# How often ``Engine.load_begun`` looks whether the preload's load has begun.
LOAD_BEGUN_POLL_SECONDS = 0.005


def open_store(settings: RuntimeSettings) -> ModelStore:
    """The configured store; without one, the default store, seeded with the bundled test model
    (when its package is installed) so that ``corral serve`` alone answers."""
    if settings.models is not None:
        return ModelStore(settings.models)
    store = ModelStore(default_models_dir())
    try:
        ensure_test_model(store)
    except TestModelUnavailableError as exc:
        log.warning("%s; serving %s as it is", exc, store.root)
    return store


def _offload_supported() -> bool:
    try:
        import_bindings()  # the bindings alone: the preload's load waits for nothing more
        import llama_cpp
    except ImportError:  # pragma: no cover - llama-cpp-python is a dependency
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


class EngineMetrics:
    """An engine's ``RuntimeMetrics``: those given, else made (once, whichever thread asks
    first) at their first use, so that prometheus_client's import waits until something
    reads or records a metric: the app's creation (``Engine.metrics``), or a load's end."""

    def __init__(self, metrics: RuntimeMetrics | None = None) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()

    def get(self) -> RuntimeMetrics:
        metrics = self._metrics
        if metrics is not None:
            return metrics
        with self._lock:
            if self._metrics is None:
                from corral_runtime.metrics import RuntimeMetrics

                self._metrics = RuntimeMetrics()
            return self._metrics


@dataclass(frozen=True, slots=True)
class Engine:
    """A started engine: the store, the manager, the preload under way, and its metrics."""

    store: ModelStore
    manager: ModelManager
    preloading: asyncio.Task[None]
    preload: tuple[str, ...]
    engine_metrics: EngineMetrics = field(default_factory=EngineMetrics)

    @property
    def metrics(self) -> RuntimeMetrics:
        """The engine's metrics (made now if nothing made them yet)."""
        return self.engine_metrics.get()

    @property
    def loading(self) -> bool:
        """Whether the preload is still under way."""
        return not self.preloading.done()

    async def load_begun(self, limit: float) -> None:
        """Return once llama.cpp is loading the preload's model (or the preload has ended, a
        failure or a model already loaded), or ``limit`` seconds from now. The checks before
        a load (its blob's GGUF header: over 100 ms for a 262k-token vocabulary) are Python
        and hold the GIL, so imports beside them delay the load's start; llama.cpp's load does
        not hold it, so the web stack is imported beside the load. The limit bounds what a
        longer wait (a new blob's hash or probe, the GPU's query) delays: ``/healthz``, and
        uvicorn's handling of SIGTERM."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while self.loading and not self.manager.loading and loop.time() < deadline:
            await asyncio.wait({self.preloading}, timeout=LOAD_BEGUN_POLL_SECONDS)

    async def close(self) -> None:
        """Abandon the preload's load under way and await the preload's end (never cancel it:
        a load runs in a thread a cancel would orphan), then unload the models."""
        if self.loading:
            log.info("shut down while preloading %s: abandoning the load", ", ".join(self.preload))
        self.manager.abandon_loads()
        await self.preloading
        await self.manager.close()


def start_engine(settings: RuntimeSettings, metrics: RuntimeMetrics | None = None) -> Engine:
    """Open the store, make the manager and start the preload on the running loop. Imports
    llama.cpp's bindings on the way, to ask whether it can offload: not numpy and the rest of
    llama-cpp-python, which the preload's load imports as it runs (``engine.bindings``).
    Without ``metrics``, the engine makes its own at their first use (``EngineMetrics``)."""
    engine_metrics = EngineMetrics(metrics)
    store = open_store(settings)
    manager = ModelManager(
        store,
        settings,
        # Only whether llama.cpp can offload: the manager reads the free VRAM at each load,
        # so asking nvidia-smi here too would only delay readiness (a second or more where
        # the driver is not kept loaded).
        GpuInfo(offload_supported=_offload_supported(), free_vram_bytes=0),
        on_change=lambda m: engine_metrics.get().observe_loaded(m.loaded()),
        on_load=lambda name, seconds: engine_metrics.get().observe_load(name, seconds),
        on_failure=lambda name: engine_metrics.get().engine_failures.labels(model=name).inc(),
    )
    preloading = asyncio.create_task(manager.preload(settings.preload))
    return Engine(store, manager, preloading, tuple(settings.preload), engine_metrics)
