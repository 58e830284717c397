"""What ``corral deploy`` applies, and the flag combinations it refuses before calling the API."""

from __future__ import annotations

import re

import pytest

from corral_operator.cli.objects import DeployRequest, model_object, server_object
from corral_operator.sources import InvalidSourceError
from corral_runtime.store.modelfile import Modelfile, parse_modelfile

pytestmark = pytest.mark.unit


def test_default_deploy() -> None:
    request = DeployRequest("gemma3:270m")
    assert request.problems() == []
    assert model_object(request, "ns") == {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "gemma3-270m", "namespace": "ns"},
        "spec": {"source": "ollama://gemma3:270m"},
    }
    assert server_object(request, "ns") == {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "ModelServer",
        "metadata": {"name": "gemma3-270m", "namespace": "ns"},
        "spec": {
            "models": ["gemma3-270m"],
            "minReplicas": 0,
            "maxReplicas": 1,
            "keepAliveSeconds": 300,
            "maxKeepAliveSeconds": 3600,
            "resources": {},  # the operator sizes it from the model
        },
    }


def test_every_flag_lands_in_the_spec() -> None:
    request = DeployRequest(
        "hf://org/repo/Tiny-Q8_0.gguf",
        gpus=2,
        min_replicas=1,
        max_replicas=3,
        keep_alive_seconds=60,
        max_keep_alive_seconds=-1,
        cpu="500m",
        memory="8Gi",
    )
    model = model_object(request, "ns")
    assert model["spec"] == {"source": "hf://org/repo/Tiny-Q8_0.gguf"}
    spec = server_object(request, "ns")["spec"]
    assert spec["models"] == [model["metadata"]["name"]] == ["tiny-q8-0"]
    assert (spec["minReplicas"], spec["maxReplicas"], spec["keepAliveSeconds"]) == (1, 3, 60)
    assert spec["maxKeepAliveSeconds"] == -1
    assert spec["resources"] == {"gpus": 2, "cpu": "500m", "memory": "8Gi"}


@pytest.mark.parametrize(
    ("request_", "problem"),
    [
        (DeployRequest("m:1", min_replicas=2, max_replicas=1), "greater than --max"),
        (DeployRequest("m:1", max_replicas=0), "at least 1"),
        (DeployRequest("m:1", gpus=-1), "cannot be negative"),
    ],
)
def test_refused_combinations(request_: DeployRequest, problem: str) -> None:
    assert any(problem in p for p in request_.problems())


PIRATE = parse_modelfile(
    """FROM gemma3:270m
TEMPLATE "{{ .Prompt }}"
SYSTEM You are a pirate.
PARAMETER temperature 0.2
PARAMETER num_ctx 2048
PARAMETER typical_p 0.5
PARAMETER stop <eot>
PARAMETER stop END
MESSAGE user Hello?
MESSAGE assistant Ahoy!
LICENSE MIT
"""
)


def test_a_modelfile_becomes_the_models_spec_served_under_its_name() -> None:
    request = DeployRequest("pirate", modelfile=PIRATE)
    model = model_object(request, "ns")
    assert model["metadata"] == {"name": "pirate", "namespace": "ns"}
    assert model["spec"] == {
        "source": "ollama://gemma3:270m",
        "name": "pirate:latest",
        "template": "{{ .Prompt }}",
        "system": "You are a pirate.",
        "parameters": {
            "temperature": 0.2,
            "numCtx": 2048,
            "typicalP": 0.5,
            "stop": ["<eot>", "END"],
        },
        "messages": [
            {"role": "user", "content": "Hello?"},
            {"role": "assistant", "content": "Ahoy!"},
        ],
        "license": "MIT",
    }
    assert server_object(request, "ns")["spec"]["models"] == ["pirate"]


def test_a_bare_modelfile_states_only_its_source_and_name() -> None:
    """What the Modelfile no longer says is left out, so the apply removes it from the Model."""
    request = DeployRequest("pirate:v2", modelfile=parse_modelfile("FROM hf://org/repo/t.gguf\n"))
    model = model_object(request, "ns")
    assert model["metadata"]["name"] == "pirate-v2"
    assert model["spec"] == {"source": "hf://org/repo/t.gguf", "name": "pirate:v2"}


@pytest.mark.parametrize(
    ("name", "base", "is_local", "said"),
    [
        (
            "pirate",
            "./weights/tiny.gguf",
            True,
            "FROM ./weights/tiny.gguf is a file on this machine",
        ),
        ("pirate", "tiny.gguf", False, "use FROM pvc://claim/path/file.gguf"),
        ("pirate", "/data/model-dir", True, "upload it where the cluster can pull it"),
        ("pirate", "ftp://host/x.gguf", False, "FROM ftp://host/x.gguf: unsupported source"),
        ("hf://org/repo/t.gguf", "gemma3:270m", False, "NAME hf://org/repo/t.gguf must be a"),
    ],
)
def test_a_modelfile_the_cluster_cannot_pull_is_refused(
    name: str, base: str, is_local: bool, said: str
) -> None:
    request = DeployRequest(name, modelfile=Modelfile(base), modelfile_is_local=is_local)
    with pytest.raises(InvalidSourceError, match=re.escape(said)):
        model_object(request, "ns")
