"""A Model says what a Modelfile says, on the real control plane: the API server takes a Model's
messages, license, name and Ollama parameters and refuses bad ones naming the field, and
``corral deploy NAME -f Modelfile`` makes a Model whose pull Job, run as the kubelet would run
it, stores a model that carries them and that ``corral serve`` (what a runtime pod runs) shows.

The test plays the kubelet: it runs the pull Job's own command with the Job's own environment on
this machine (a directory standing in for the cache claim, a local registry for Ollama's), then
reports the container's end with what the puller wrote to its termination message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from corral_operator import api, pull
from corral_runtime.store.layout import ModelStore
from corral_runtime.store.modelfile import parse_modelfile
from devstack.operator import Operator
from tests.cluster.operator.support import Cluster, wait_for
from tests.support.gguf_corpus import model_of_size
from tests.support.registry import running_registry
from tests.support.serveproc import serving_process

pytestmark = pytest.mark.cluster

MESSAGES = [
    {"role": "system", "content": "Speak like a pirate."},
    {"role": "user", "content": "Hello?"},
    {"role": "assistant", "content": "Ahoy!"},
]
EVERY_NEW_PARAMETER = {
    "numKeep": -1,
    "typicalP": 0.5,
    "presencePenalty": -2,
    "frequencyPenalty": 2,
    "numBatch": 65536,
    "numGpu": -1,
    "mainGpu": 0,
    "numa": False,
    "useMmap": True,
    "numThread": 512,
}


def _apply(kubectl: Any, namespace: str, spec: dict[str, Any]) -> Any:
    model = {
        "apiVersion": "corral.dev/v1alpha1",
        "kind": "Model",
        "metadata": {"name": "m", "namespace": namespace},
        "spec": spec,
    }
    # --validate=false: the API server, not kubectl, must be the one that accepts or rejects.
    return kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(model))


def test_a_model_with_messages_license_name_and_every_parameter_is_accepted(
    kubectl: Any, cluster: Cluster
) -> None:
    spec = {
        "source": "gemma3:270m",
        "name": "pirate/gemma:v1",
        "messages": [*MESSAGES, {"role": "tool", "content": "x" * 8192}] * 16,
        "license": "L" * 65536,
        "parameters": EVERY_NEW_PARAMETER,
    }
    result = _apply(kubectl, cluster.ns, spec)
    assert result.returncode == 0, result.stderr
    stored = cluster.get(api.MODELS, "m")
    assert stored is not None
    assert stored["spec"]["parameters"] == EVERY_NEW_PARAMETER
    assert len(stored["spec"]["messages"]) == 64 and stored["spec"]["license"] == "L" * 65536


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"messages": [{"role": "robot", "content": "beep"}]}, "spec.messages.role"),
        ({"messages": [{"role": "user"}]}, "spec.messages.content"),
        ({"messages": [{"role": "user", "content": "x" * 8193}]}, "spec.messages.content"),
        ({"messages": [{"role": "user", "content": "x"}] * 65}, "spec.messages"),
        ({"license": "L" * 65537}, "spec.license"),
        ({"name": "no spaces please"}, "spec.name"),
        ({"parameters": {"typicalP": 1.5}}, "spec.parameters.typicalP"),
        ({"parameters": {"presencePenalty": -3}}, "spec.parameters.presencePenalty"),
        ({"parameters": {"numThread": 513}}, "spec.parameters.numThread"),
        ({"parameters": {"numKeep": -2}}, "spec.parameters.numKeep"),
        ({"parameters": {"useMmap": "yes"}}, "spec.parameters.useMmap"),
    ],
)
def test_a_bad_modelfile_field_is_rejected_naming_it(
    kubectl: Any, namespace: str, crds: None, change: dict[str, Any], field: str
) -> None:
    result = _apply(kubectl, namespace, {"source": "gemma3:270m", **change})
    assert result.returncode != 0
    # API servers name a list item's field with or without its index (spec.messages[0].role).
    said = re.sub(r"\[\d+\]", "", result.stderr)
    assert "is invalid" in said and field in said


def corral(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CORRAL_HOST", "OLLAMA_HOST")}
    return subprocess.run(
        [sys.executable, "-m", "corral_runtime.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **(env or {})},
    )


def play_the_pull_job(cluster: Cluster, job_name: str, store: Path, tmp_path: Path) -> None:
    """Run the Job's command with its environment here (the claim at ``store``; --insecure for
    the plain-HTTP test registry), and end its pod with the puller's termination message."""
    job = cluster.batch.read_namespaced_job(job_name, cluster.ns)
    (container,) = job.spec.template.spec.containers
    result_file = tmp_path / "termination-log"
    env = {e.name: e.value for e in container.env if e.name != "HOME"}
    env[pull.RESULT_FILE_ENV] = str(result_file)
    args = [str(store) if arg == api.MODELS_MOUNT else arg for arg in container.args]
    pulled = corral(*args, "--insecure", env=env)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    pod = wait_for(lambda: cluster.job_pods(f"job-name={job_name}"), 20, "the pull pod")[0]
    cluster.finish_pod(pod, exit_code=0, message=result_file.read_text())


def test_deploy_from_a_modelfile_serves_what_it_says(
    kubeconfig: Path, cluster: Cluster, operator: Operator, tmp_path: Path
) -> None:
    with running_registry(tmp_path / "registry") as registry:
        registry.add_model("library", "tiny", "latest", model_of_size(1024 * 1024, seed=19))
        modelfile = tmp_path / "Modelfile"
        modelfile.write_text(
            f"FROM ollama://{registry.host}/library/tiny\n"
            "SYSTEM You are a pirate.\n"
            "PARAMETER typical_p 0.5\n"
            "PARAMETER num_keep 8\n"
            "PARAMETER stop <x>\n"
            'MESSAGE user "Hello?"\n'
            "MESSAGE assistant Ahoy!\n"
            'LICENSE """Apache-2.0\nSee LICENSE."""\n'
        )
        deployed = corral(
            "deploy", "pirate", "-f", str(modelfile), "-n", cluster.ns,
            "--kubeconfig", str(kubeconfig),
        )  # fmt: skip
        assert deployed.returncode == 0, deployed.stderr
        assert deployed.stdout.splitlines()[-1] == "Chat with it: corral run pirate:latest"
        model = cluster.get(api.MODELS, "pirate")
        assert model is not None
        assert model["spec"]["name"] == "pirate:latest"
        assert model["spec"]["parameters"] == {"typicalP": 0.5, "numKeep": 8, "stop": ["<x>"]}
        assert model["spec"]["messages"] == MESSAGES[1:]
        server = cluster.get(api.MODELSERVERS, "pirate")
        assert server is not None and server["spec"]["models"] == ["pirate"]

        job_name = wait_for(
            lambda: (cluster.get(api.MODELS, "pirate") or {}).get("status", {}).get("pullJob"),
            what="the pull Job",
        )
        store = tmp_path / "cache"
        play_the_pull_job(cluster, job_name, store, tmp_path)

    cluster.wait_condition(api.MODELS, "pirate", "Ready", "True", "Ready")
    status = (cluster.get(api.MODELS, "pirate") or {})["status"]
    assert status["name"] == "pirate:latest"
    stored = ModelStore(store).get("pirate:latest")
    assert stored.messages == MESSAGES[1:]
    assert stored.license == "Apache-2.0\nSee LICENSE."
    assert stored.system == "You are a pirate."
    assert stored.params == {"typical_p": 0.5, "num_keep": 8, "stop": ["<x>"]}

    # A runtime pod serves the cache as corral serve serves this store: /api/show says it all.
    with serving_process(store, log=tmp_path / "serve.log") as served:
        show = f"{served.base_url}/api/show"
        shown = httpx.post(show, json={"model": "pirate:latest"}, timeout=30)
    assert shown.status_code == 200, shown.text
    doc = shown.json()
    assert doc["license"] == "Apache-2.0\nSee LICENSE."
    assert doc["system"] == "You are a pirate."
    assert parse_modelfile(doc["modelfile"]).messages == MESSAGES[1:]
    assert "typical_p" in doc["parameters"] and "num_keep" in doc["parameters"]
