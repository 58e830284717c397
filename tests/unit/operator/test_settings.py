from __future__ import annotations

import pytest

from corral_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit


def test_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_OPERATOR_NAMESPACES", "a, b")
    monkeypatch.setenv(
        "CORRAL_OPERATOR_CACHE_PROFILES", '{"fast": {"size": "5Gi", "storageClassName": "ssd"}}'
    )
    monkeypatch.setenv("CORRAL_OPERATOR_RUNTIME_IMAGE", "registry.local/corral:1")
    settings = OperatorSettings()
    assert settings.namespaces == ["a", "b"]
    fast = settings.cache_profiles["fast"]
    assert (fast.size, fast.storage_class_name, fast.access_mode) == ("5Gi", "ssd", "ReadWriteMany")
    assert settings.runtime_image == "registry.local/corral:1"


def test_defaults() -> None:
    settings = OperatorSettings()
    assert settings.finalizer == "corral.dev/finalizer"
    assert "default" in settings.cache_profiles
    assert settings.gpu_tolerations[0]["key"] == "nvidia.com/gpu"


def test_timers(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = OperatorSettings()
    assert (defaults.resync_seconds, defaults.pull_progress_seconds) == (60.0, 5.0)
    monkeypatch.setenv("CORRAL_OPERATOR_RESYNC_SECONDS", "0")  # 0: no resync
    assert OperatorSettings().resync_seconds == 0
    monkeypatch.setenv("CORRAL_OPERATOR_RESYNC_SECONDS", "-1")
    with pytest.raises(ValueError):
        OperatorSettings()
