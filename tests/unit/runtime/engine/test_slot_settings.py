"""The engine's settings: slots from the context length unless given, the wait queue's bound
and timeout, from the environment and from ``corral serve`` flags."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from corral_runtime.cli import build_parser
from corral_runtime.commands.serve import settings_from_args
from corral_runtime.settings import RuntimeSettings

pytestmark = pytest.mark.unit


def test_slots_default_to_the_context_and_the_queue_wait_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CORRAL_PARALLEL", "CORRAL_QUEUE_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings = RuntimeSettings()
    assert settings.parallel is None
    assert settings.queue_timeout_seconds == 600.0


def test_the_environment_sets_slots_and_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PARALLEL", "8")
    monkeypatch.setenv("CORRAL_MAX_QUEUE", "16")
    monkeypatch.setenv("CORRAL_QUEUE_TIMEOUT_SECONDS", "30")
    settings = RuntimeSettings()
    assert (settings.parallel, settings.max_queue, settings.queue_timeout_seconds) == (8, 16, 30)


def test_serve_flags_set_slots_queue_and_timeout() -> None:
    args = build_parser().parse_args(
        ["serve", "--parallel", "4", "--max-queue", "2", "--queue-timeout", "1.5"]
    )
    settings = settings_from_args(args)
    assert (settings.parallel, settings.max_queue, settings.queue_timeout_seconds) == (4, 2, 1.5)


@pytest.mark.parametrize(
    "values", [{"parallel": 0}, {"queue_timeout_seconds": 0}, {"max_queue": -1}]
)
def test_nonsense_is_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        RuntimeSettings.model_validate(values)
