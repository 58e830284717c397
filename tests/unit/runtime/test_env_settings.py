"""The settings classes that read the runtime's environment besides the server's: pull sources and
the user's cache (the names are the ones the operator and users set; the pull Job's are checked
against the operator's builder in tests/unit/test_pull_job_contract.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral_runtime.settings import (
    HF_DEFAULT_ENDPOINT,
    PVC_DEFAULT_ROOT,
    CacheSettings,
    SourceSettings,
)

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


def test_the_cache_is_xdg_cache_home_else_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert CacheSettings().cache_home == tmp_path / ".cache"
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    assert CacheSettings().cache_home == tmp_path / ".cache"
    monkeypatch.setenv("XDG_CACHE_HOME", "/var/cache/me")
    assert CacheSettings().cache_home == Path("/var/cache/me")
