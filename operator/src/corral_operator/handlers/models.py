"""Model handlers: the cache PVC, the pull Job, the Model's status, and blob collection."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException

from corral_operator import api, pull
from corral_operator.builders.jobs import build_gc_job
from corral_operator.handlers.apply import Logger, ObjectRef, apply_plan
from corral_operator.handlers.context import Context
from corral_operator.handlers.events import post_events
from corral_operator.kube import namespace_terminating
from corral_operator.planners.events import collected_event, model_events
from corral_operator.planners.model import gc_needed, job_label_selector, model_cache, plan_model
from corral_operator.status.patch import write_status

log = logging.getLogger(__name__)

GC_POLL_SECONDS = 2.0


def reconcile_model(ctx: Context, namespace: str, name: str, logger: Logger) -> None:
    """Converge one Model: apply its PVC and pull Job, drop stale Jobs, report status, and
    post the Events of what changed."""
    ctx.one_at_a_time(
        "Model", namespace, name, lambda: _reconcile_model(ctx, namespace, name, logger)
    )


def _reconcile_model(ctx: Context, namespace: str, name: str, logger: Logger) -> bool:
    """``reconcile_model`` under the Model's lock; False once the Model is gone."""
    kube = ctx.kube
    model = kube.get("Model", namespace, name)
    if model is None:
        ctx.forget(namespace, api.pull_job_name(name))
        ctx.forget(namespace, api.gc_job_name(name))
        return False
    if model["metadata"].get("deletionTimestamp"):
        return True
    jobs = kube.list("Job", namespace, job_label_selector(name, "pull"))
    pods = kube.list("Pod", namespace, job_label_selector(name, "pull"))
    plan = plan_model(model, jobs, pods, ctx.settings)
    apply_plan(
        ctx,
        [obj for obj in (plan.pvc, plan.job) if obj is not None],
        [ObjectRef("Job", namespace, stale) for stale in plan.stale_jobs],
        logger,
    )
    status = dict(plan.status)
    if plan.progress_pod is not None:
        progress = read_progress(ctx, namespace, plan.progress_pod)
        if progress is not None:
            status.update(progress.as_status())
    write_status(kube, model, status, plan.conditions)
    post_events(ctx, model, model_events(model.get("status") or {}, status, plan.conditions))
    return True


def read_progress(ctx: Context, namespace: str, pod: str) -> pull.PullProgress | None:
    """Where a running pull stands, from the tail of its pod's log; None when the log cannot be
    read (a kubelet that serves no logs, a container just starting): progress is a courtesy,
    never a reason for the reconcile to fail."""
    try:
        tail = ctx.kube.log_tail(
            namespace,
            pod,
            pull.PULL_CONTAINER,
            lines=pull.LOG_TAIL_LINES,
            limit_bytes=pull.LOG_LIMIT_BYTES,
        )
    except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:
        log.debug("no pull progress from pod %s/%s: %s", namespace, pod, exc)
        return None
    return pull.parse_progress(tail)


def collect_model(ctx: Context, model: Mapping[str, Any], logger: Logger) -> None:
    """On delete: remove the Model's entry from the cache unless another Model still serves it.

    Runs a collect Job on the cache PVC and holds the finalizer until it is done. A failed Job
    is logged and does not block the deletion: leftover blobs cost space, not correctness.
    """
    meta = model["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    others = ctx.kube.list("Model", namespace)
    if not gc_needed(model, others):
        return
    job = ctx.kube.get("Job", namespace, api.gc_job_name(name))
    if job is None:
        status = model.get("status") or {}
        claim = api.cache_pvc_name(model_cache(model))
        try:
            gc_job = build_gc_job(dict(model), str(status["name"]), claim, ctx.settings)
            apply_plan(ctx, [gc_job], (), logger)
        except ApiException as error:
            if not namespace_terminating(error):
                raise
            # The cache claim goes with the namespace: nothing to collect, and holding the
            # finalizer would hold the namespace's deletion forever.
            logger.info("namespace %s is being deleted: its cache goes with it", namespace)
            return
        raise kopf.TemporaryError("removing the model from the cache", delay=GC_POLL_SECONDS)
    phase = pull.job_phase(job)
    if phase == "Failed":
        logger.warning(
            "collect Job %s failed (%s); blobs may remain in the cache",
            api.gc_job_name(name),
            pull.job_failure_message(job),
        )
        return
    if phase != "Succeeded":
        raise kopf.TemporaryError("removing the model from the cache", delay=GC_POLL_SECONDS)
    status = model.get("status") or {}
    claim = api.cache_pvc_name(model_cache(model))
    post_events(ctx, model, [collected_event(str(status.get("name")), claim)])


def model_of(labels: Mapping[str, str]) -> str | None:
    return labels.get(api.LABEL_MODEL)
