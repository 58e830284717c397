"""RuntimeSettings: defaults, CORRAL_* environment, and flag-shaped values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from corral_runtime.settings import RuntimeSettings

pytestmark = pytest.mark.unit


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("CORRAL_PORT", "CORRAL_MODELS", "CORRAL_GPU_LAYERS", "CORRAL_HOST"):
        monkeypatch.delenv(key, raising=False)
    settings = RuntimeSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 11434)
    assert settings.models is None and settings.gpu_layers == "auto"
    assert settings.keep_alive_seconds == 300


def test_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CORRAL_MODELS", str(tmp_path))
    monkeypatch.setenv("CORRAL_PORT", "8080")
    monkeypatch.setenv("CORRAL_GPU_LAYERS", "12")
    monkeypatch.setenv("CORRAL_API_KEY", "k")
    settings = RuntimeSettings()
    assert settings.models == tmp_path and settings.port == 8080
    assert settings.gpu_layers == 12 and settings.api_key == "k"


@pytest.mark.parametrize("value", ["most", "-1", 2.5])
def test_bad_gpu_layers(value: object) -> None:
    with pytest.raises(ValidationError):
        RuntimeSettings(gpu_layers=value)  # type: ignore[arg-type]
