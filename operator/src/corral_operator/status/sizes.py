"""Byte counts as people read them in a status (``kubectl get -o wide``): decimal units, as
Ollama's CLI prints sizes, beside the byte fields that tools read."""

from __future__ import annotations

_UNITS = ("KB", "MB", "GB", "TB")
_STEP = 1000


def format_size(size: int) -> str:
    """``999 B``, ``1 KB``, ``1.5 KB``, ``291 MB``, ``4.9 GB``: Ollama's HumanBytes.

    Below 10 of a unit one decimal shows, unless the value is whole; from 10 on, whole units,
    cut rather than rounded (as Ollama does), so ``999_999`` bytes never reads ``1000 KB``. A
    value that one decimal would round up to 10 shows as ``10``, never ``10.0``.
    """
    if size < _STEP:
        return f"{max(size, 0)} B"
    value, step = float(size) / _STEP, 0
    while value >= _STEP and step < len(_UNITS) - 1:
        value, step = value / _STEP, step + 1
    unit = _UNITS[step]
    tenths = round(value, 1)
    if tenths >= 10:
        return f"{int(value) if value >= 10 else 10} {unit}"
    if tenths == int(tenths):
        return f"{int(tenths)} {unit}"
    return f"{tenths:.1f} {unit}"


def format_progress(completed: int, total: int) -> str:
    """``12 MB / 291 MB (4%)``: the percent is cut, never rounded up, so 100% means done."""
    if total <= 0:
        return f"{format_size(completed)} / {format_size(total)}"
    percent = min(completed, total) * 100 // total
    return f"{format_size(completed)} / {format_size(total)} ({percent}%)"
