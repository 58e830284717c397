"""The settings classes that read the runtime's environment besides the server's: pull sources,
the operator's pull Job, the user's cache (the names are the ones the operator and users set)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_operator.builders.jobs import build_pull_job
from corral_operator.settings import OperatorSettings
from corral_runtime.settings import (
    HF_DEFAULT_ENDPOINT,
    PVC_DEFAULT_ROOT,
    CacheSettings,
    PullJobSettings,
    SourceSettings,
)
from tests.unit.operator.factories import model

pytestmark = pytest.mark.unit

PROXIES = ("http_proxy", "https_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CORRAL_HF_ENDPOINT", "CORRAL_PVC_ROOT", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def test_sources_default_to_hugging_face_and_the_job_mount() -> None:
    settings = SourceSettings()
    assert (settings.hf_endpoint, settings.pvc_root) == (HF_DEFAULT_ENDPOINT, PVC_DEFAULT_ROOT)
    assert not settings.proxied


def test_sources_read_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_HF_ENDPOINT", "http://mirror:8080")
    monkeypatch.setenv("CORRAL_PVC_ROOT", "/claims")
    settings = SourceSettings()
    assert (settings.hf_endpoint, settings.pvc_root) == ("http://mirror:8080", "/claims")


@pytest.mark.parametrize("name", [*PROXIES, *(p.upper() for p in PROXIES)])
def test_any_proxy_variable_in_either_case_is_a_proxy(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, "http://proxy:3128")
    assert SourceSettings().proxied
    monkeypatch.setenv(name, "")
    assert not SourceSettings().proxied


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


def test_the_cache_is_xdg_cache_home_else_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert CacheSettings().cache_home == tmp_path / ".cache"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert CacheSettings().cache_home == tmp_path / ".cache"
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/me")
    assert CacheSettings().cache_home == Path("/var/cache/me")
