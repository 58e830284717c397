"""The tables ``corral ps`` and ``corral models`` print, built purely from API objects (dicts).

Each ``*_row`` turns one object into display strings; ``render`` lines the rows up in columns
the way ``ollama ps`` and ``kubectl get`` do (left-aligned, three spaces apart). ``ps`` prints
the cluster's ModelServers, or, against one server, its ``/api/ps`` as ``ollama ps`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from corral_operator.api import parse_time
from corral_operator.cli.values import format_duration, format_size

PS_HEADERS = ("NAME", "MODELS", "READY", "IDLE", "KEEP-ALIVE", "STATE", "LOADED")
MODELS_HEADERS = ("NAME", "SOURCE", "READY", "SIZE", "PARAMETERS", "QUANTIZATION")
RUNNING_HEADERS = ("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")
# Ollama writes "never" as a time centuries away; anything this far off reads "Forever".
FOREVER_AFTER = timedelta(days=20 * 365)


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


def processor(size: int, size_vram: int) -> str:
    """Where a loaded model's memory is, as ``ollama ps`` says it: ``100% CPU``, ``100% GPU``,
    or the split, ``48%/52% CPU/GPU`` (``Unknown`` when the sizes do not add up)."""
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size <= 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def human_duration(delta: timedelta) -> str:
    """A duration in Ollama's words: ``Less than a second``, ``12 seconds``, ``About a
    minute``, ``4 minutes``, ``About an hour``, ``5 hours``, then days, weeks, months, years."""
    seconds = int(delta.total_seconds())
    if seconds < 1:
        return "Less than a second"
    if seconds < 60:
        return "1 second" if seconds == 1 else f"{seconds} seconds"
    minutes = seconds // 60
    if minutes < 60:
        return "About a minute" if minutes == 1 else f"{minutes} minutes"
    hours = round(delta.total_seconds() / 3600)
    if hours == 1:
        return "About an hour"
    for limit, unit_hours, unit in (
        (48, 1, "hours"),
        (24 * 7 * 2, 24, "days"),
        (24 * 30 * 2, 24 * 7, "weeks"),
        (24 * 365 * 2, 24 * 30, "months"),
    ):
        if hours < limit:
            return f"{hours // unit_hours} {unit}"
    return f"{hours // (24 * 365)} years"


def until(expires_at: datetime | None, now: datetime) -> str:
    """When a loaded model is unloaded, as ``ollama ps`` says it: ``4 minutes from now``,
    ``Forever`` (keep_alive -1), ``Stopping...`` once the time has passed (it is being
    unloaded), ``Never`` when the server gave no time."""
    if expires_at is None:
        return "Never"
    left = expires_at - now
    if left < timedelta(0):
        return "Stopping..."
    if left > FOREVER_AFTER:
        return "Forever"
    return f"{human_duration(left)} from now"


def running_row(model: Mapping[str, Any], now: datetime) -> tuple[str, ...]:
    """One row of a server's ``/api/ps``: name, digest's first 12, size, where it runs,
    its context length and when it is unloaded."""
    size = int(model.get("size") or 0)
    context = model.get("context_length")
    return (
        str(model.get("name") or model.get("model") or ""),
        str(model.get("digest") or "").removeprefix("sha256:")[:12],
        format_size(size),
        processor(size, int(model.get("size_vram") or 0)),
        str(context) if context else "-",
        until(parse_time(model.get("expires_at")), now),
    )


def running_table(models: Sequence[Mapping[str, Any]], now: datetime) -> str:
    """``ollama ps``'s table of a server's loaded models, in the order the server lists them."""
    return render(RUNNING_HEADERS, [running_row(m, now) for m in models])


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
