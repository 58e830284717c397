"""The tables ``corral ps`` and ``corral models`` print, built purely from API objects (dicts).

Each ``*_row`` turns one object into display strings; ``render`` lines the rows up in columns
the way ``ollama ps`` and ``kubectl get`` do (left-aligned, three spaces apart).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from corral_operator.api import parse_time
from corral_operator.cli.values import format_duration, format_size

PS_HEADERS = ("NAME", "MODELS", "READY", "IDLE", "KEEP-ALIVE", "STATE", "LOADED")
MODELS_HEADERS = ("NAME", "SOURCE", "READY", "SIZE", "PARAMETERS", "QUANTIZATION")


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append("   ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return None


def desired_replicas(spec: Mapping[str, Any]) -> int:
    """What the server is asked to run: ``spec.replicas`` (set by the gateway, an HPA or KEDA
    through the scale subresource) clamped to [minReplicas, maxReplicas], else minReplicas."""
    low, high = int(spec.get("minReplicas", 0)), int(spec.get("maxReplicas", 1))
    requested = spec.get("replicas")
    if requested is None:
        return low
    return max(low, min(high, int(requested)))


def state(obj: Mapping[str, Any]) -> str:
    """The Ready condition's reason (Available, ScaledToZero, Starting, ModelsNotReady, …)."""
    ready = condition(obj, "Ready")
    if ready is None:
        return "Pending"
    return str(ready.get("reason") or ("Ready" if ready.get("status") == "True" else "NotReady"))


def idle(status: Mapping[str, Any], now: datetime) -> str:
    """Time since the last request the gateway recorded; ``-`` before the first one."""
    last = parse_time(status.get("lastRequestTime"))
    if last is None:
        return "-"
    return format_duration((now - last).total_seconds())


def server_row(
    server: Mapping[str, Any], now: datetime, loaded: Sequence[str] | None = None
) -> tuple[str, ...]:
    """One ``corral ps`` row. ``loaded`` is what the ready pods' /api/ps report (None when no
    pod could be asked, which differs from an empty list: pods that answered with nothing)."""
    spec: Mapping[str, Any] = server.get("spec") or {}
    status: Mapping[str, Any] = server.get("status") or {}
    keep_alive = spec.get("keepAliveSeconds", 300)
    return (
        str(server["metadata"]["name"]),
        ",".join(spec.get("models") or ()),
        f"{int(status.get('readyReplicas') or 0)}/{desired_replicas(spec)}",
        idle(status, now),
        format_duration(int(keep_alive)),
        state(server),
        "-" if loaded is None else (",".join(sorted(set(loaded))) or "(none)"),
    )


def model_row(model: Mapping[str, Any]) -> tuple[str, ...]:
    """One ``corral models`` row: what the Model is and what its pull found out."""
    status: Mapping[str, Any] = model.get("status") or {}
    ready = condition(model, "Ready")
    if ready is None:
        ready_text = "Pending"
    elif ready.get("status") == "True":
        ready_text = "True"
    else:
        ready_text = str(ready.get("reason") or "False")
    size = status.get("sizeBytes")
    return (
        str(model["metadata"]["name"]),
        str((model.get("spec") or {}).get("source", "")),
        ready_text,
        format_size(int(size) if size is not None else None),
        str(status.get("parameterSize") or "-"),
        str(status.get("quantization") or "-"),
    )


def ps_table(
    servers: Sequence[Mapping[str, Any]],
    now: datetime,
    loaded: Mapping[str, Sequence[str] | None] | None = None,
) -> str:
    loaded = loaded or {}
    rows = [
        server_row(s, now, loaded.get(s["metadata"]["name"]))
        for s in sorted(servers, key=lambda s: str(s["metadata"]["name"]))
    ]
    return render(PS_HEADERS, rows)


def models_table(models: Sequence[Mapping[str, Any]]) -> str:
    rows = [model_row(m) for m in sorted(models, key=lambda m: str(m["metadata"]["name"]))]
    return render(MODELS_HEADERS, rows)
