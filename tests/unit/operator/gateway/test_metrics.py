"""The gateway's metrics: the idle deadline each server's keep-alive gives it, as a gauge; what
each choice of a pod did with its request's prefix."""

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


def test_a_routed_request_counts_its_prefix_share_and_outcome() -> None:
    metrics = GatewayMetrics()
    metrics.observe_route(("ns", "s"), "CacheAware", 0.75, "hit")
    metrics.observe_route(("ns", "s"), "CacheAware", 0.0, "miss")
    sample = metrics.registry.get_sample_value
    labels = {"namespace": "ns", "server": "s", "strategy": "CacheAware"}
    share = "corral_gateway_prefix_match_ratio"
    assert sample(f"{share}_bucket", {**labels, "le": "0.0"}) == 1
    assert sample(f"{share}_bucket", {**labels, "le": "0.7"}) == 1
    assert sample(f"{share}_bucket", {**labels, "le": "0.8"}) == 2
    assert sample(f"{share}_sum", labels) == 0.75
    decisions = "corral_gateway_routing_decisions_total"
    assert sample(decisions, {**labels, "outcome": "hit"}) == 1
    assert sample(decisions, {**labels, "outcome": "miss"}) == 1
    assert sample(decisions, {**labels, "outcome": "spill"}) is None


def test_a_cached_child_is_the_labelled_child_and_counts_in_the_registry() -> None:
    metrics = GatewayMetrics()
    counted = metrics.requests_by("/api/generate", "m:1", "200")
    assert counted is metrics.requests_by("/api/generate", "m:1", "200")
    assert counted is metrics.requests.labels(path="/api/generate", model="m:1", status="200")
    counted.inc()
    metrics.in_flight_of("ns", "s").set(3)
    sample = metrics.registry.get_sample_value
    labels = {"path": "/api/generate", "model": "m:1", "status": "200"}
    assert sample("corral_gateway_requests_total", labels) == 1
    assert sample("corral_gateway_in_flight_requests", {"namespace": "ns", "server": "s"}) == 3
