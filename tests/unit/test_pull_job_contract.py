"""Where the two packages meet without HTTP: the operator's pull Job sets the variables that
``corral pull`` (the runtime's ``PullJobSettings``) reads, under the same names."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from corral_operator.api import PARAMETER_NAMES
from corral_operator.builders.jobs import build_pull_job
from corral_operator.settings import OperatorSettings
from corral_runtime.api.options import OllamaOptions
from corral_runtime.commands.models import parse_messages
from corral_runtime.settings import PullJobSettings
from corral_runtime.store.modelfile import PARAMETER_TYPES
from tests.unit.operator.factories import model

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_the_pull_jobs_variables_reach_corral_pull(monkeypatch: pytest.MonkeyPatch) -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    job = build_pull_job(
        model(
            digest="sha256:" + "a" * 64,
            template="T",
            system="S",
            parameters={"topK": 40},
            messages=messages,
            license="MIT",
        ),
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
    assert settings.license == "MIT"
    assert settings.messages is not None and parse_messages(settings.messages) == messages
    assert settings.result_file == container["terminationMessagePath"]


def test_a_model_and_a_modelfile_take_the_same_parameters() -> None:
    """Each field of the CRD's spec.parameters has an Ollama name (the pull Job passes it under
    it), the names are exactly the parameters a Modelfile may set (so ``corral deploy -f`` maps
    every one), and each is an option the runtime validates: no field of a Model is dropped on
    the way to the served model, and no PARAMETER of a Modelfile is without a field."""
    crd = yaml.safe_load((ROOT / "crds" / "corral.dev_models.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    fields = set(spec["properties"]["parameters"]["properties"])
    assert fields == set(PARAMETER_NAMES)
    assert set(PARAMETER_NAMES.values()) == set(PARAMETER_TYPES)
    assert set(PARAMETER_TYPES) <= set(OllamaOptions.model_fields)
