"""The gateway's metrics: the idle deadline each server's keep-alive gives it, as a gauge."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from corral_operator.api import FOREVER
from corral_operator.gateway.metrics import GatewayMetrics

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def test_the_idle_deadline_gauge() -> None:
    metrics = GatewayMetrics()
    metrics.observe_idle_deadline(("ns", "s"), FOREVER)  # maxKeepAliveSeconds -1 and a -1
    assert b'corral_gateway_idle_deadline_timestamp_seconds{namespace="ns",server="s"} +Inf' in (
        metrics.exposition()
    )
    metrics.observe_idle_deadline(("ns", "s"), NOW)
    assert b'{namespace="ns",server="s"} 1.7357328e+09' in metrics.exposition()  # NOW
    metrics.observe_idle_deadline(("ns", "s"), None)  # no request set a keep_alive
    assert b"corral_gateway_idle_deadline_timestamp_seconds{" not in metrics.exposition()
