"""Executing a plan: every object a handler's plan wants is applied, every stale one deleted, here
and only here, and what changed is logged the way ``kubectl apply`` says it (``job.batch/x
created``, ``deployment.apps/y configured``, ``job.batch/z deleted``; unchanged objects at DEBUG).

Whether an apply changed anything is what the API server says, not a guess from comparing our
desired dict with what is stored (defaults and other managers' fields differ there without any
change): the object's resourceVersion before and after the server-side apply (a no-op apply
keeps it), and, when it moved, our field manager's entry in ``managedFields`` (the server
rewrites it when our apply changes a field, and leaves it when the version moved because
another writer, a controller setting status, wrote between our read and our apply).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from corral_operator import api
from corral_operator.handlers.context import Context
from corral_operator.kube import api_version

Verdict = Literal["created", "configured", "unchanged"]
Logger = logging.Logger | logging.LoggerAdapter[Any]


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An object to delete: its kind (as :mod:`corral_operator.kube` knows kinds) and place."""

    kind: str
    namespace: str
    name: str


def _applied_by_us(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Our field manager's ``managedFields`` entry (what we own and when that last changed)."""
    for entry in (obj.get("metadata") or {}).get("managedFields") or ():
        if entry.get("manager") == api.FIELD_MANAGER and entry.get("operation") == "Apply":
            return dict(entry)
    return None


def apply_verdict(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> Verdict:
    """What a server-side apply did, from the object before it (None: there was none) and the
    API server's answer. Our entry's time has one-second resolution: a change of ours within the
    second of our previous one reads as unchanged (it is then logged at DEBUG only)."""
    if before is None:
        return "created"
    old = (before.get("metadata") or {}).get("resourceVersion")
    new = (after.get("metadata") or {}).get("resourceVersion")
    if old is not None and old == new:
        return "unchanged"
    ours = _applied_by_us(before)
    return "unchanged" if ours is not None and ours == _applied_by_us(after) else "configured"


def display_name(kind: str, name: str) -> str:
    """``kind.group/name`` as kubectl prints it (``deployment.apps/x``, ``service/y``)."""
    group = api_version(kind).rpartition("/")[0]
    return f"{kind.lower()}.{group}/{name}" if group else f"{kind.lower()}/{name}"


def apply_plan(
    ctx: Context,
    applies: Iterable[Mapping[str, Any]],
    deletes: Iterable[ObjectRef],
    logger: Logger,
) -> None:
    """Apply ``applies`` (server-side, in order), then delete ``deletes``; log each change.

    Every object is read first, one GET each (the price of knowing from the API server whether
    an apply changed it), and only then are they applied one after the other, so the writes
    follow each other as closely as the plan's order says (a status written next comes right
    after the last of them).
    """
    kube = ctx.kube
    objects = list(applies)
    befores = [
        kube.get(obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        for obj in objects
    ]
    for obj, before in zip(objects, befores, strict=True):
        verdict = apply_verdict(before, kube.apply(obj))
        level = logging.DEBUG if verdict == "unchanged" else logging.INFO
        logger.log(level, "%s %s", display_name(obj["kind"], obj["metadata"]["name"]), verdict)
    for ref in deletes:
        if kube.delete(ref.kind, ref.namespace, ref.name):
            logger.info("%s deleted", display_name(ref.kind, ref.name))
