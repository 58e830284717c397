"""Model references -> Model/ModelServer names, the same rule as the samples follow."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from corral_operator.cli.naming import client_model_name, dns_name, resource_name
from corral_operator.sources import InvalidSourceError

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[4] / "manifests" / "samples"
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("gemma3:270m", "gemma3-270m"),
        ("ollama://gemma3:270m", "gemma3-270m"),
        ("qwen2.5:0.5b", "qwen2.5-0.5b"),
        ("llama3.1:8b", "llama3.1-8b"),
        ("gemma3", "gemma3"),
        ("gemma3:latest", "gemma3"),
        ("Library/Gemma3:270M", "library-gemma3-270m"),
        ("myteam/coder:7b-q4_K_M", "myteam-coder-7b-q4-k-m"),
        ("ollama://registry.example.com:5000/team/m:v1", "registry.example.com-5000-team-m-v1"),
        (
            "hf://bartowski/Qwen2.5-0.5B-Instruct-GGUF/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf@main",
            "qwen2.5-0.5b-instruct-q4-k-m",
        ),
        ("https://example.org/files/SmolLM2_360M.Q8_0.gguf?download=1", "smollm2-360m.q8-0"),
        ("pvc://weights/llms/tiny.gguf", "tiny"),
    ],
)
def test_resource_names(model: str, name: str) -> None:
    assert resource_name(model) == name
    assert DNS_SUBDOMAIN.fullmatch(name)


def test_samples_of_ollama_models_are_named_by_the_same_rule() -> None:
    """``corral deploy gemma3:270m`` and ``kubectl apply`` of its sample meet on one Model and
    one ModelServer. (Samples of files may pick their own names, as a user may.)"""
    checked = 0
    for sample in SAMPLES.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(sample.read_text()) if d]
        for model in (d for d in docs if d["kind"] == "Model"):
            if "://" in model["spec"]["source"] and not model["spec"]["source"].startswith(
                "ollama://"
            ):
                continue
            assert resource_name(model["spec"]["source"]) == model["metadata"]["name"], sample
            checked += 1
        for server in (d for d in docs if d["kind"] == "ModelServer"):
            if len(server["spec"]["models"]) == 1:
                assert server["metadata"]["name"] == server["spec"]["models"][0], sample
    assert checked >= 4


def test_long_names_are_cut_to_a_label_value_and_stay_distinct() -> None:
    a = resource_name("hf://org/repo/" + "x" * 80 + "-a.gguf")
    b = resource_name("hf://org/repo/" + "x" * 80 + "-b.gguf")
    assert len(a) <= 63 and len(b) <= 63
    assert a != b
    assert DNS_SUBDOMAIN.fullmatch(a) and DNS_SUBDOMAIN.fullmatch(b)


def test_dots_and_dashes_never_meet_or_end_a_name() -> None:
    assert dns_name("-a..b_.c-") == "a.b.c"
    assert dns_name("A__B") == "a-b"


@pytest.mark.parametrize("model", ["", " gemma3", "ftp://x/y.gguf", "hf://no-file", "_"])
def test_bad_references_are_refused(model: str) -> None:
    with pytest.raises(InvalidSourceError):
        resource_name(model)


def test_the_name_clients_use() -> None:
    assert client_model_name("gemma3:270m") == "gemma3:270m"
    assert client_model_name("gemma3") == "gemma3:latest"
    assert client_model_name("pvc://weights/llms/tiny.gguf") == "tiny:latest"
