from __future__ import annotations

import json

import pytest

from corral_operator.builders.cache import build_cache_pvc
from corral_operator.builders.jobs import build_gc_job, build_pull_job
from corral_operator.settings import CacheProfile, OperatorSettings
from tests.unit.operator.factories import model

pytestmark = pytest.mark.unit


def test_pull_job_passes_the_model_definition() -> None:
    job = build_pull_job(
        model(
            digest="sha256:" + "a" * 64,
            template="{{ .Prompt }}",
            system="brief",
            parameters={"topK": 40, "numCtx": 2048, "stop": ["x"]},
        ),
        "gemma3:270m",
        "corral-cache-default",
        OperatorSettings(pull_backoff_limit=2),
    )
    spec = job["spec"]
    assert spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] > 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert json.loads(env["CORRAL_PULL_PARAMETERS"]) == {
        "top_k": 40,
        "num_ctx": 2048,
        "stop": ["x"],
    }
    assert env["CORRAL_PULL_DIGEST"].startswith("sha256:")
    assert (env["CORRAL_PULL_TEMPLATE"], env["CORRAL_PULL_SYSTEM"]) == ("{{ .Prompt }}", "brief")
    assert container["terminationMessagePath"] == env["CORRAL_PULL_RESULT_FILE"]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {
        "claimName": "corral-cache-default",
        "readOnly": False,
    }


def test_pull_job_passes_messages_and_license() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Ahoy!"}]
    job = build_pull_job(
        model(messages=messages, license="MIT", parameters={"typicalP": 0.5, "numKeep": 8}),
        "gemma3:270m",
        "corral-cache-default",
        OperatorSettings(),
    )
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["CORRAL_PULL_MESSAGES"]) == messages
    assert env["CORRAL_PULL_LICENSE"] == "MIT"
    assert json.loads(env["CORRAL_PULL_PARAMETERS"]) == {"typical_p": 0.5, "num_keep": 8}


def test_pull_job_without_messages_or_license_sets_neither() -> None:
    job = build_pull_job(model(), "gemma3:270m", "corral-cache-default", OperatorSettings())
    names = {e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not names & {"CORRAL_PULL_MESSAGES", "CORRAL_PULL_LICENSE", "CORRAL_PULL_PARAMETERS"}


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"license": "MIT"},
    ],
)
def test_pull_job_name_changes_with_messages_and_license(
    change: dict[str, object],
) -> None:
    """A changed Modelfile field is a new Job (a re-pull); an unset one keeps the old name, so a
    Model from before the field existed is not pulled again."""
    settings = OperatorSettings()
    before = build_pull_job(model(), "n", "c", settings)["metadata"]["name"]
    assert before == build_pull_job(model(messages=None), "n", "c", settings)["metadata"]["name"]
    assert build_pull_job(model(**change), "n", "c", settings)["metadata"]["name"] != before


def test_pull_job_name_changes_with_the_source() -> None:
    settings = OperatorSettings()
    a = build_pull_job(model(), "n", "c", settings)["metadata"]["name"]
    b = build_pull_job(model(source="qwen3:0.6b"), "n", "c", settings)["metadata"]["name"]
    assert a != b and a.startswith("corral-pull-gemma-") and len(a) <= 63


def test_gc_job_removes_the_stored_name() -> None:
    job = build_gc_job(model(), "gemma3:270m", "corral-cache-default", OperatorSettings())
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "rm",
        "gemma3:270m",
        "--models",
        "/models",
    ]


def test_cache_pvc_follows_the_profile() -> None:
    pvc = build_cache_pvc(
        "ns",
        "fast",
        CacheProfile(size="5Gi", storageClassName="ssd", accessMode="ReadWriteOnce"),
    )
    assert pvc["metadata"]["name"] == "corral-cache-fast"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["storageClassName"] == "ssd"
    assert "ownerReferences" not in pvc["metadata"]
    assert "storageClassName" not in build_cache_pvc("ns", "d", CacheProfile())["spec"]


def test_pull_job_mounts_the_claim_of_a_pvc_source() -> None:
    job = build_pull_job(
        model(source="pvc://seed/models/gemma.gguf"),
        "gemma:latest",
        "corral-cache-default",
        OperatorSettings(),
    )
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # The puller reads the file where the Job mounts its claim, read-only.
    assert container["args"][:2] == ["pull", "/mnt/pvc/seed/models/gemma.gguf"]
    assert {"name": "source", "mountPath": "/mnt/pvc/seed", "readOnly": True} in container[
        "volumeMounts"
    ]
    assert {
        "name": "source",
        "persistentVolumeClaim": {"claimName": "seed", "readOnly": True},
    } in pod["volumes"]


def test_pull_job_of_a_registry_source_mounts_only_the_cache() -> None:
    job = build_pull_job(model(), "gemma3:270m", "corral-cache-default", OperatorSettings())
    pod = job["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["models", "tmp"]
    assert pod["containers"][0]["args"][1] == model()["spec"]["source"]
