from __future__ import annotations

import json
from typing import Any

import pytest

from corral_operator.planners.model import gc_needed, is_pulling, plan_model
from corral_operator.pull import pull_spec_hash
from corral_operator.settings import OperatorSettings
from tests.unit.operator.factories import GEMMA_STATUS, model

pytestmark = pytest.mark.unit
SETTINGS = OperatorSettings()


def _reasons(plan: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in plan.conditions}


def _job(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def _pod(job: str, message: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"job-name": job}},
        "status": {
            "containerStatuses": [{"name": "pull", "state": {"terminated": {"message": message}}}]
        },
    }


def test_new_model_starts_a_pull() -> None:
    plan = plan_model(model(), [], [], SETTINGS)
    assert plan.job is not None and plan.pvc is not None
    assert _reasons(plan)["Ready"] == ("False", "Pulling")


def _pull_name(plan: Any) -> str:
    (container,) = plan.job["spec"]["template"]["spec"]["containers"]
    return str(next(e["value"] for e in container["env"] if e["name"] == "CORRAL_PULL_NAME"))


def test_a_named_model_is_pulled_and_served_under_its_name() -> None:
    """spec.name (a Modelfile's ``corral deploy NAME -f``) wins over the source's own name, and
    renaming pulls again; without it an Ollama source keeps its name."""
    named = model()
    named["spec"]["name"] = "pirate:v1"
    plan, unnamed = plan_model(named, [], [], SETTINGS), plan_model(model(), [], [], SETTINGS)
    assert (_pull_name(plan), _pull_name(unnamed)) == ("pirate:v1", "gemma3:270m")
    assert plan.job["metadata"]["name"] != unnamed.job["metadata"]["name"]  # type: ignore[index]


def test_pending_job_is_not_recreated_and_stale_jobs_go() -> None:
    name = plan_model(model(), [], [], SETTINGS).job["metadata"]["name"]  # type: ignore[index]
    plan = plan_model(model(), [_job(name, active=1), _job("corral-pull-gemma-old")], [], SETTINGS)
    assert plan.job is None and plan.stale_jobs == ("corral-pull-gemma-old",)
    assert _reasons(plan)["Pulled"] == ("False", "Pulling")


def test_completed_job_reports_details() -> None:
    name = plan_model(model(), [], [], SETTINGS).job["metadata"]["name"]  # type: ignore[index]
    done = _job(name, conditions=[{"type": "Complete", "status": "True"}])
    result = {"name": "gemma3:270m", "digest": "sha256:ab", "quantization": "Q4_K_M"}
    plan = plan_model(model(), [done], [_pod(name, json.dumps(result))], SETTINGS)
    assert _reasons(plan) == {"Pulled": ("True", "Pulled"), "Ready": ("True", "Ready")}
    assert plan.status["digest"] == "sha256:ab" and plan.status["quantization"] == "Q4_K_M"
    assert plan.status["pullSpecHash"] == pull_spec_hash(model()["spec"])


def test_failed_job_reports_the_puller_error() -> None:
    name = plan_model(model(), [], [], SETTINGS).job["metadata"]["name"]  # type: ignore[index]
    failed = _job(
        name, conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    )
    plan = plan_model(model(), [failed], [_pod(name, '{"error": "404"}')], SETTINGS)
    assert _reasons(plan)["Ready"] == ("False", "PullFailed")
    assert "404" in plan.conditions[0].message


def test_digest_pin_mismatch() -> None:
    pinned = model(digest="sha256:" + "1" * 64)
    name = plan_model(pinned, [], [], SETTINGS).job["metadata"]["name"]  # type: ignore[index]
    done = _job(name, conditions=[{"type": "Complete", "status": "True"}])
    plan = plan_model(pinned, [done], [_pod(name, '{"digest": "sha256:22"}')], SETTINGS)
    assert _reasons(plan)["Ready"] == ("False", "DigestMismatch")


def test_already_pulled_needs_no_job() -> None:
    spec_hash = pull_spec_hash(model()["spec"])
    status = {
        "pullSpecHash": spec_hash,
        "name": "gemma3:270m",
        "conditions": [{"type": "Pulled", "status": "True"}],
    }
    plan = plan_model(model(status=status), [], [], SETTINGS)
    assert plan.job is None and _reasons(plan)["Ready"] == ("True", "Ready")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [({"cache": "nope"}, "UnknownCacheProfile"), ({"source": "ftp://x"}, "InvalidSource")],
)
def test_bad_input(spec: dict[str, Any], reason: str) -> None:
    plan = plan_model(model(**spec), [], [], SETTINGS)
    assert plan.job is None and _reasons(plan)["Ready"] == ("False", reason)


def test_gc_only_for_the_last_user_of_a_name() -> None:
    a = model("a", status=dict(GEMMA_STATUS))
    b = model("b", status=dict(GEMMA_STATUS))
    other_cache = model("c", status=dict(GEMMA_STATUS), cache="fast")
    assert not gc_needed(a, [a, b])
    assert gc_needed(a, [a, other_cache])
    assert not gc_needed(model("never-pulled"), [])


# -- pull progress ---------------------------------------------------------------------------


def _running_pod(job: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{job}-x1", "labels": {"job-name": job}},
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "pull", "state": {"running": {}}}],
        },
    }


def test_a_new_pull_starts_without_bytes() -> None:
    # A re-pull must not show the bytes of the pull before it.
    plan = plan_model(model(status={"completedBytes": 9, "totalBytes": 9}), [], [], SETTINGS)
    assert plan.status["completedBytes"] is None and plan.status["totalBytes"] is None
    assert plan.status["progress"] is None
    assert plan.progress_pod is None


def test_a_running_pull_names_the_pod_to_read_progress_from() -> None:
    name = plan_model(model(), [], [], SETTINGS).job["metadata"]["name"]  # type: ignore[index]
    plan = plan_model(model(), [_job(name, active=1)], [_running_pod(name)], SETTINGS)
    assert plan.progress_pod == f"{name}-x1"
    # What was reported stays until the log says more.
    assert {"completedBytes", "totalBytes", "progress"}.isdisjoint(plan.status)
    other = plan_model(model(), [_job(name, active=1)], [_running_pod("another-job")], SETTINGS)
    assert other.progress_pod is None


def test_a_finished_pull_ends_at_its_size() -> None:
    name = plan_model(model(), [], [], SETTINGS).job["metadata"]["name"]  # type: ignore[index]
    done = _job(name, conditions=[{"type": "Complete", "status": "True"}])
    plan = plan_model(model(), [done], [_pod(name, '{"sizeBytes": 291000000}')], SETTINGS)
    assert plan.status["completedBytes"] == plan.status["totalBytes"] == 291_000_000
    # The strings -o wide shows, beside the bytes tools read.
    assert plan.status["size"] == "291 MB"
    assert plan.status["progress"] == "291 MB / 291 MB (100%)"
    assert plan.progress_pod is None


def test_a_model_pulled_before_readable_sizes_gets_them() -> None:
    status = {
        "pullSpecHash": pull_spec_hash(model()["spec"]),
        "sizeBytes": 253_113_024,
        "completedBytes": 253_113_024,
        "totalBytes": 253_113_024,
        "conditions": [{"type": "Pulled", "status": "True"}],
    }
    plan = plan_model(model(status=status), [], [], SETTINGS)
    assert plan.status["size"] == "253 MB"
    assert plan.status["progress"] == "253 MB / 253 MB (100%)"


def test_a_pull_without_a_size_reports_no_size() -> None:
    name = plan_model(model(), [], [], SETTINGS).job["metadata"]["name"]  # type: ignore[index]
    done = _job(name, conditions=[{"type": "Complete", "status": "True"}])
    plan = plan_model(model(), [done], [_pod(name, '{"digest": "sha256:ab"}')], SETTINGS)
    assert "size" not in plan.status and "progress" not in plan.status


@pytest.mark.parametrize(
    ("conditions", "pulling"),
    [
        ([{"type": "Pulled", "status": "False", "reason": "Pulling"}], True),
        ([{"type": "Pulled", "status": "False", "reason": "PullFailed"}], False),
        ([{"type": "Pulled", "status": "True", "reason": "Pulled"}], False),
        ([], False),
    ],
)
def test_is_pulling(conditions: list[dict[str, str]], pulling: bool) -> None:
    assert is_pulling({"conditions": conditions}) is pulling
    assert is_pulling(None) is False
