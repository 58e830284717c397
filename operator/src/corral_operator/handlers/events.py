"""Posting the Events a planner decided (:mod:`corral_operator.planners.events`): the one place
the handlers tell ``kubectl describe`` what happened. An Event is a courtesy: one that cannot be
posted is logged, never a reason for the reconcile to fail."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException

from corral_operator.handlers.context import Context
from corral_operator.planners.events import Event

log = logging.getLogger(__name__)


def post_events(ctx: Context, obj: Mapping[str, Any], events: Iterable[Event]) -> None:
    """Post each of ``events`` about ``obj``, in order."""
    meta = obj["metadata"]
    for event in events:
        try:
            ctx.kube.post_event(obj, event.type, event.reason, event.message, datetime.now(UTC))
        except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
            log.warning(
                "no %s Event for %s/%s: %s", event.reason, meta["namespace"], meta["name"], exc
            )
