"""What a Model needs next: its cache PVC, a pull Job, and the status that describes it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral_operator import api, pull
from corral_operator.builders.cache import build_cache_pvc
from corral_operator.builders.jobs import build_pull_job
from corral_operator.settings import OperatorSettings
from corral_operator.sources import InvalidSourceError, parse_source, served_name
from corral_operator.status.conditions import Condition, find_condition, is_true
from corral_operator.status.sizes import format_progress, format_size

PULLED = "Pulled"
READY = "Ready"


@dataclass(frozen=True)
class ModelPlan:
    """Objects to apply, stale pull Jobs to delete, and the status to report."""

    pvc: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    stale_jobs: tuple[str, ...] = ()
    status: dict[str, Any] = field(default_factory=dict)
    conditions: tuple[Condition, ...] = ()
    # The running pull pod whose log tells the pull's progress (completedBytes/totalBytes).
    progress_pod: str | None = None


def _not_ready(reason: str, message: str) -> tuple[Condition, ...]:
    return (Condition(PULLED, "False", reason, message), Condition(READY, "False", reason, message))


def readable_sizes(fields: Mapping[str, Any]) -> dict[str, str]:
    """``size`` and ``progress``, the strings ``kubectl get -o wide`` shows, for the byte fields
    in ``fields`` (sizeBytes; completedBytes with totalBytes); those absent give none."""
    readable = {}
    if fields.get("sizeBytes") is not None:
        readable["size"] = format_size(int(fields["sizeBytes"]))
    completed, total = fields.get("completedBytes"), fields.get("totalBytes")
    if completed is not None and total is not None:
        readable["progress"] = format_progress(int(completed), int(total))
    return readable


def plan_model(
    model: Mapping[str, Any],
    jobs: Sequence[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    settings: OperatorSettings,
) -> ModelPlan:
    """Decide the next step for ``model``.

    ``jobs`` are the Model's pull Jobs (any generation of its spec); ``pods`` the pods of the
    Job for the current spec, whose termination message carries the pull result.
    """
    meta, spec = model["metadata"], model["spec"]
    status: Mapping[str, Any] = model.get("status") or {}
    profile_name = str(spec.get("cache") or "default")
    profile = settings.cache_profiles.get(profile_name)
    if profile is None:
        known = ", ".join(sorted(settings.cache_profiles)) or "none"
        return ModelPlan(
            conditions=_not_ready(
                "UnknownCacheProfile",
                f"spec.cache: no cache profile {profile_name!r} (configured: {known})",
            )
        )
    try:
        source = parse_source(str(spec.get("source") or ""))
    except InvalidSourceError as exc:
        return ModelPlan(conditions=_not_ready("InvalidSource", f"spec.source: {exc}"))

    # A Model made from a Modelfile names itself (spec.name, as ollama create NAME does).
    name = str(spec.get("name") or served_name(source, meta["name"]))
    pvc = build_cache_pvc(meta["namespace"], profile_name, profile)
    claim = pvc["metadata"]["name"]
    spec_hash = pull.pull_spec_hash(spec)
    desired_job = build_pull_job(model, name, claim, settings)
    job_name = desired_job["metadata"]["name"]
    stale = tuple(j["metadata"]["name"] for j in jobs if j["metadata"]["name"] != job_name)
    current = next((j for j in jobs if j["metadata"]["name"] == job_name), None)
    base_status: dict[str, Any] = {
        "source": spec["source"],
        "cachePVC": claim,
        "pullJob": job_name,
    }

    if status.get("pullSpecHash") == spec_hash and is_true(status.get("conditions"), PULLED):
        # Already pulled for this spec: the Job may be gone (cleaned up), nothing to redo. The
        # readable sizes are filled in for a Model pulled before the status carried them.
        return ModelPlan(
            pvc=pvc,
            stale_jobs=stale,
            status={**base_status, **readable_sizes(status)},
            conditions=(
                Condition(PULLED, "True", "Pulled", f"{status.get('name', name)} is in the cache"),
                Condition(READY, "True", "Ready", ""),
            ),
        )
    # No bytes to report until a pull of this spec runs (a re-pull starts from nothing).
    no_progress = {"completedBytes": None, "totalBytes": None, "progress": None}
    if current is None:
        return ModelPlan(
            pvc=pvc,
            job=desired_job,
            stale_jobs=stale,
            status={**base_status, **no_progress},
            conditions=_not_ready("Pulling", f"starting pull Job {job_name}"),
        )

    phase = pull.job_phase(current)
    own_pods = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == job_name]
    result = pull.latest_result(own_pods, pull.PULL_CONTAINER)
    if phase == "Failed":
        detail = result.error if result and result.error else pull.job_failure_message(current)
        return ModelPlan(
            pvc=pvc,
            stale_jobs=stale,
            status=base_status,
            conditions=_not_ready("PullFailed", f"pull Job {job_name}: {detail}"),
        )
    if phase != "Succeeded":
        attempts = int((current.get("status") or {}).get("failed") or 0)
        retry = f" (retry {attempts} of {settings.pull_backoff_limit})" if attempts else ""
        state = "running" if phase == "Running" else "waiting for its pod"
        progress_pod = pull.running_pod(own_pods, pull.PULL_CONTAINER)
        return ModelPlan(
            pvc=pvc,
            stale_jobs=stale,
            # Bytes already reported stay until the running pod's log says more.
            status=base_status,
            conditions=_not_ready("Pulling", f"pull Job {job_name} {state}{retry}"),
            progress_pod=progress_pod,
        )

    pinned = spec.get("digest")
    if pinned and result is not None and result.digest and result.digest != pinned:
        return ModelPlan(
            pvc=pvc,
            stale_jobs=stale,
            status=base_status,
            conditions=_not_ready(
                "DigestMismatch", f"spec.digest is {pinned} but the source has {result.digest}"
            ),
        )
    details = result.as_status() if result else {}
    if result is not None and result.size_bytes is not None:
        # A finished pull ends at its full size, whatever the last progress line said.
        details.update(pull.PullProgress(result.size_bytes, result.size_bytes).as_status())
    details.update(readable_sizes(details))
    stored_name = (result.name if result and result.name else None) or name
    message = "" if result else "the pull Job reported no details (no termination message)"
    return ModelPlan(
        pvc=pvc,
        stale_jobs=stale,
        status={**base_status, **details, "name": stored_name, "pullSpecHash": spec_hash},
        conditions=(
            Condition(PULLED, "True", "Pulled", message or f"{stored_name} is in the cache"),
            Condition(READY, "True", "Ready", ""),
        ),
    )


def is_pulling(status: Mapping[str, Any] | None) -> bool:
    """Whether a Model's status says its pull is under way (its progress is worth reading)."""
    pulled = find_condition((status or {}).get("conditions"), PULLED)
    return (pulled or {}).get("status") == "False" and (pulled or {}).get("reason") == "Pulling"


def model_cache(model: Mapping[str, Any]) -> str:
    return str((model.get("spec") or {}).get("cache") or "default")


def gc_needed(model: Mapping[str, Any], others: Sequence[Mapping[str, Any]]) -> bool:
    """Whether deleting ``model`` should remove its stored name from the cache.

    Not when it never got pulled, nor when another Model of the same cache serves the same
    stored name (it still needs those blobs). Blobs shared between different names are kept
    by the store itself, which only deletes blobs no manifest references.
    """
    status = model.get("status") or {}
    name = status.get("name")
    if not name or not status.get("pullSpecHash"):
        return False
    uid = model["metadata"].get("uid")
    for other in others:
        if other["metadata"].get("uid") == uid or other["metadata"].get("deletionTimestamp"):
            continue
        if model_cache(other) == model_cache(model) and (
            (other.get("status") or {}).get("name") == name
        ):
            return False
    return True


def job_label_selector(model_name: str, component: str) -> str:
    return f"{api.LABEL_MODEL}={model_name},{api.LABEL_COMPONENT}={component}"
