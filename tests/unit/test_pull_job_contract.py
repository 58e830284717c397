"""Where the two packages meet without HTTP: the operator's pull Job sets the variables that
``corral pull`` (the runtime's ``PullJobSettings``) reads, under the same names."""

from __future__ import annotations

import pytest

from corral_operator.builders.jobs import build_pull_job
from corral_operator.settings import OperatorSettings
from corral_runtime.settings import PullJobSettings
from tests.unit.operator.factories import model

pytestmark = pytest.mark.unit


def test_the_pull_jobs_variables_reach_corral_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    job = build_pull_job(
        model(digest="sha256:" + "a" * 64, template="T", system="S", parameters={"topK": 40}),
        "gemma3:270m",
        "corral-cache-default",
        OperatorSettings(),
    )
    (container,) = job["spec"]["template"]["spec"]["containers"]
    for item in container["env"]:
        monkeypatch.setenv(item["name"], item["value"])
    settings = PullJobSettings()
    assert settings.name == "gemma3:270m"
    assert settings.digest == "sha256:" + "a" * 64
    assert (settings.template, settings.system) == ("T", "S")
    assert settings.parameters == '{"top_k": 40}'
    assert settings.result_file == container["terminationMessagePath"]
