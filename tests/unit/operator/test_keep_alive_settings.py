"""The keep-alive knobs are OperatorSettings fields, read from their CORRAL_OPERATOR_* variables."""

from __future__ import annotations

import pytest

from corral_operator.settings import OperatorSettings

pytestmark = pytest.mark.unit


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = OperatorSettings()
    assert (defaults.keep_alive_check_seconds, defaults.in_flight_stale_seconds) == (10.0, 120.0)
    monkeypatch.setenv("CORRAL_OPERATOR_KEEP_ALIVE_CHECK_SECONDS", "1")
    monkeypatch.setenv("CORRAL_OPERATOR_IN_FLIGHT_STALE_SECONDS", "30")
    read = OperatorSettings()
    assert (read.keep_alive_check_seconds, read.in_flight_stale_seconds) == (1.0, 30.0)


@pytest.mark.parametrize(
    "name", ["CORRAL_OPERATOR_KEEP_ALIVE_CHECK_SECONDS", "CORRAL_OPERATOR_IN_FLIGHT_STALE_SECONDS"]
)
def test_zero_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "0")
    with pytest.raises(ValueError):
        OperatorSettings()
