"""Probes and metrics: ``/healthz`` (the process answers), ``/readyz`` (the server can serve
now), ``/metrics`` (Prometheus).

Ready means "can serve now", not "the process is alive": no loaded model has failed without
being loaded again yet (a model whose decode thread died answers 503 here until its reload is
done), and a model can answer (one is loaded, or the store holds one to load).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from corral_runtime.api.deps import ManagerDep, MetricsDep
from corral_runtime.metrics import CONTENT_TYPE
from corral_runtime.store.catalog import list_models

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, manager: ManagerDep) -> JSONResponse:
    failed = manager.unavailable()
    if failed:
        return JSONResponse(
            {"status": "model failed, reloading", "failed": failed}, status_code=503
        )
    if manager.loaded():
        return JSONResponse({"status": "ready", "models": [m.name for m in manager.loaded()]})
    if await asyncio.to_thread(list_models, manager.store):
        return JSONResponse({"status": "ready", "models": []})
    return JSONResponse({"status": "no model available"}, status_code=503)


@router.get("/metrics")
async def metrics(metrics: MetricsDep, manager: ManagerDep) -> Response:
    loaded = manager.loaded()
    metrics.observe_loaded(loaded)
    metrics.pending_requests.clear()
    metrics.forget_engines()
    for model in loaded:
        worker = model.worker
        metrics.pending_requests.labels(model=model.name).set(worker.pending)
        metrics.observe_engine(
            model.name,
            queued=worker.queued,
            busy=worker.busy_slots,
            slots=worker.slot_count,  # the reserved ones too: busy can reach them
            queued_by_priority=worker.queued_by_class(),
            decode_steps=worker.decode_steps,
            decode_computations=worker.decode_computations,
        )
    return Response(metrics.render(), media_type=CONTENT_TYPE)
