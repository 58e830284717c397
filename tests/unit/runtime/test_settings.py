"""RuntimeSettings: defaults, CORRAL_* environment, and flag-shaped values."""

from __future__ import annotations

import math
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


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5m", 300.0), ("1h30m", 5400.0), ("300", 300.0), (" 90s ", 90.0), (0, 0.0), ("0", 0.0)],
)
def test_keep_alive_takes_ollama_durations(value: object, seconds: float) -> None:
    assert RuntimeSettings(keep_alive_seconds=value).keep_alive_seconds == seconds  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, "-1", "-1s", "-5m", -0.5])
def test_a_negative_keep_alive_is_forever_as_in_a_request(value: object) -> None:
    # The operator gives runtime pods -1: it must be the request's -1, not "unload now".
    assert RuntimeSettings(keep_alive_seconds=value).keep_alive_seconds == math.inf  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["CORRAL_KEEP_ALIVE", "CORRAL_KEEP_ALIVE_SECONDS"])
def test_keep_alive_environment_names(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.delenv("CORRAL_KEEP_ALIVE", raising=False)
    monkeypatch.delenv("CORRAL_KEEP_ALIVE_SECONDS", raising=False)
    monkeypatch.setenv(name, "10m")
    assert RuntimeSettings().keep_alive_seconds == 600.0


@pytest.mark.parametrize("value", ["soon", "5 minutes", "nan", "", True, [1]])
def test_keep_alive_that_is_no_duration_is_refused(value: object) -> None:
    with pytest.raises(ValidationError, match="invalid keep-alive"):
        RuntimeSettings(keep_alive_seconds=value)  # type: ignore[arg-type]
