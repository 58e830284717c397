"""What a Model says besides its weights (messages, license, parameters) reaches the store: the
operator's pull Job environment, given to a real ``corral pull`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral_operator.builders.jobs import build_pull_job
from corral_operator.settings import OperatorSettings
from corral_runtime.store.layout import ModelNotFoundError, ModelStore
from tests.support.gguf_corpus import model_of_size
from tests.support.registry import TestRegistry, running_registry
from tests.unit.operator.factories import model

pytestmark = pytest.mark.runtime

GGUF = model_of_size(1024 * 1024, seed=19)
CORRAL = (sys.executable, "-m", "corral_runtime.cli")
MESSAGES = [
    {"role": "system", "content": "Answer like a pirate."},
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Ahoy!"},
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestRegistry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        reg.add_model("library", "tiny", "latest", GGUF, template="{{ .Prompt }}", system="Hi")
        yield reg


def job_environment(spec: dict[str, Any], result_file: Path) -> dict[str, str]:
    """The pull Job's variables for a Model with ``spec``, the result file moved to ``tmp``."""
    job = build_pull_job(model(**spec), "tiny:latest", "corral-cache-default", OperatorSettings())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"] if item["name"] != "HOME"}
    return {**env, "CORRAL_PULL_RESULT_FILE": str(result_file)}


def corral_pull(source: str, models: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CORRAL, "pull", source, "--insecure", "--models", str(models)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


def test_a_registry_pull_stores_the_models_messages_license_and_parameters(
    registry: TestRegistry, tmp_path: Path
) -> None:
    source = f"ollama://{registry.host}/library/tiny"
    spec = {
        "source": source,
        "messages": MESSAGES,
        "license": "Apache-2.0\nSee LICENSE.",
        "parameters": {"typicalP": 0.5, "presencePenalty": 0.25, "numKeep": 8, "stop": ["<x>"]},
    }
    env = job_environment(spec, tmp_path / "result.json")
    result = corral_pull(source, tmp_path / "models", env)
    assert result.returncode == 0, result.stdout + result.stderr
    stored = ModelStore(tmp_path / "models").get("tiny:latest")
    assert stored.messages == MESSAGES
    assert stored.license == "Apache-2.0\nSee LICENSE."
    assert stored.params == {
        "typical_p": 0.5,
        "presence_penalty": 0.25,
        "num_keep": 8,
        "stop": ["<x>"],
    }
    # The registry's own template and system stay where the Model sets none.
    assert (stored.template, stored.system) == ("{{ .Prompt }}", "Hi")


def test_a_file_pull_stores_the_models_messages_and_license(tmp_path: Path) -> None:
    weights = tmp_path / "tiny.gguf"
    weights.write_bytes(GGUF)
    env = job_environment(
        {"source": "https://example.com/tiny.gguf", "messages": MESSAGES[1:], "license": "MIT"},
        tmp_path / "result.json",
    )
    result = corral_pull(str(weights), tmp_path / "models", env)
    assert result.returncode == 0, result.stdout + result.stderr
    stored = ModelStore(tmp_path / "models").get("tiny:latest")
    assert (stored.messages, stored.license) == (MESSAGES[1:], "MIT")


@pytest.mark.parametrize(
    ("messages", "said"),
    [
        ('[{"role": "robot", "content": "beep"}]', "--messages[0]: role must be one of"),
        ('[{"role": "user"}]', "--messages[0] must be an object with a string content"),
        ('{"role": "user", "content": "x"}', "--messages must be a JSON array"),
        ("not json", "--messages must be a JSON array"),
    ],
)
def test_bad_messages_fail_the_pull_before_anything_is_stored(
    registry: TestRegistry, tmp_path: Path, messages: str, said: str
) -> None:
    result_file = tmp_path / "result.json"
    source = f"ollama://{registry.host}/library/tiny"
    env = {**job_environment({"source": source}, result_file), "CORRAL_PULL_MESSAGES": messages}
    result = corral_pull(source, tmp_path / "models", env)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: ") and said in result.stderr
    assert said in json.loads(result_file.read_text())["error"]
    with pytest.raises(ModelNotFoundError):
        ModelStore(tmp_path / "models").get("tiny:latest")
