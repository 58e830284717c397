from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from corral_runtime.metrics import RuntimeMetrics
from corral_runtime.startup import EngineMetrics

pytestmark = pytest.mark.unit


def test_the_engine_keeps_the_metrics_it_is_given() -> None:
    given = RuntimeMetrics()
    assert EngineMetrics(given).get() is given


def test_the_engine_makes_its_metrics_once_whichever_threads_ask_first() -> None:
    metrics = EngineMetrics()
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda _: metrics.get(), range(32)))
    assert all(m is made[0] for m in made)
    assert isinstance(made[0], RuntimeMetrics)
    assert metrics.get() is made[0]
