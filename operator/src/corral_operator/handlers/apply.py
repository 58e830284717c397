"""Executing a plan: every object a handler's plan wants is applied, every stale one deleted, here
and only here, and what changed is logged the way ``kubectl apply`` says it (``job.batch/x
created``, ``deployment.apps/y configured``, ``job.batch/z deleted``; unchanged objects at DEBUG).

Whether an apply changed anything is what the API server answers, not a guess from comparing
our desired dict with what is stored (defaults and other managers' fields differ there without
any change): 201 Created for a new object; else, against its answer to our previous apply, the
resourceVersion (a no-op apply keeps it) and our field manager's ``managedFields`` entry (the
server rewrites it only when our apply changes a field, so a version moved by another writer,
a controller setting status, is not our change). The first apply of an object since the
operator started has no previous answer: our entry's time against the server's clock (its Date
header) says whether this apply changed it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from corral_operator import api
from corral_operator.handlers.context import Context
from corral_operator.kube import Applied, api_version

Verdict = Literal["created", "configured", "unchanged"]
Logger = logging.Logger | logging.LoggerAdapter[Any]
_CLOCK_SLACK = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """An object to delete: its kind (as :mod:`corral_operator.kube` knows kinds) and place."""

    kind: str
    namespace: str
    name: str


def apply_verdict(previous: Applied | None, answer: Applied) -> Verdict:
    """What a server-side apply did, from the API server's ``answer`` and its answer to our
    previous apply of the object (None: none since the operator started). Our entry's time has
    one-second resolution: a change of ours within the second of the one before it reads as
    unchanged (and is logged at DEBUG only)."""
    if answer.created:
        return "created"
    if previous is not None:
        same = previous.resource_version == answer.resource_version or previous.ours == answer.ours
        return "unchanged" if same else "configured"
    changed_at = api.parse_time((answer.ours or {}).get("time"))
    if changed_at is None or answer.server_time is None:
        return "configured"
    # managedFields times have one-second resolution, and the request may span a second.
    return "configured" if changed_at >= answer.server_time - _CLOCK_SLACK else "unchanged"


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

    No read before a write: each verdict comes from the apply's own answer and the one kept in
    ``ctx.applied`` from the previous apply of that object.
    """
    kube = ctx.kube
    for obj in applies:
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        answer = kube.apply(obj)
        verdict = apply_verdict(ctx.applied.get(key), answer)
        ctx.applied[key] = answer
        level = logging.DEBUG if verdict == "unchanged" else logging.INFO
        logger.log(level, "%s %s", display_name(key[0], key[2]), verdict)
    for ref in deletes:
        ctx.applied.pop((ref.kind, ref.namespace, ref.name), None)
        if kube.delete(ref.kind, ref.namespace, ref.name):
            logger.info("%s deleted", display_name(ref.kind, ref.name))
