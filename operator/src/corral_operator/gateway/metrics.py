"""Prometheus metrics of the gateway, in a registry of its own (several apps may share a
process in tests)."""

from __future__ import annotations

import contextlib
import math
from datetime import datetime
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from corral_operator.api import FOREVER

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Cold starts range from a second (small model, warm node) to many minutes (large pull).
_HOLD_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
# Shares of a request's prefix: none, tenths, all.
_SHARE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0)

M = TypeVar("M", Counter, Gauge, Histogram)


class Children(Generic[M]):
    """A labelled metric's children, each looked up once per label values.

    ``labels()`` checks, converts and sorts its arguments under a lock on every call; a proxied
    request touches five labelled children, so the routed path keeps them here instead. Only
    for metrics whose children are never removed (a removed child would stay cached)."""

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        """The child for ``values``, in the order the metric's label names are declared."""
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "corral_gateway_requests_total",
            "Requests answered, by path, model and status code.",
            ["path", "model", "status"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "corral_gateway_in_flight_requests",
            "Requests being proxied now, by ModelServer.",
            ["namespace", "server"],
            registry=self.registry,
        )
        self.held = Gauge(
            "corral_gateway_held_requests",
            "Requests waiting for their server to have a ready pod, by model.",
            ["model"],
            registry=self.registry,
        )
        self.hold_seconds = Histogram(
            "corral_gateway_hold_seconds",
            "Time requests were held waiting for a ready pod (cold start).",
            ["model"],
            buckets=_HOLD_BUCKETS,
            registry=self.registry,
        )
        self.held_by_priority = Gauge(
            "corral_gateway_held_requests_by_priority",
            "Requests waiting for their server to have a ready pod, by model and priority class.",
            ["model", "priority"],
            registry=self.registry,
        )
        self.hold_seconds_by_priority = Histogram(
            "corral_gateway_hold_seconds_by_priority",
            "Time requests were held waiting for a ready pod, by model and priority class.",
            ["model", "priority"],
            buckets=_HOLD_BUCKETS,
            registry=self.registry,
        )
        self.scale_events = Counter(
            "corral_gateway_scale_events_total",
            "Scale-ups the gateway requested, by ModelServer and reason.",
            ["namespace", "server", "reason"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "corral_gateway_rejected_requests_total",
            "Requests refused or failed while held (queue full, deadline).",
            ["model", "reason"],
            registry=self.registry,
        )
        self.idle_deadline = Gauge(
            "corral_gateway_idle_deadline_timestamp_seconds",
            "When every model of a ModelServer has expired by its requests' keep_alive "
            "(+Inf: never); absent while no request set a keep_alive.",
            ["namespace", "server"],
            registry=self.registry,
        )
        self.retries = Counter(
            "corral_gateway_upstream_retries_total",
            "Requests retried on another pod before their first byte was sent.",
            registry=self.registry,
        )
        self.prefix_match = Histogram(
            "corral_gateway_prefix_match_ratio",
            "Share of a routed request's text that the gateway had sent the chosen pod before "
            "(its estimate of the prompt found in that pod's KV cache), by ModelServer and "
            "routing strategy.",
            ["namespace", "server", "strategy"],
            buckets=_SHARE_BUCKETS,
            registry=self.registry,
        )
        self.routing_decisions = Counter(
            "corral_gateway_routing_decisions_total",
            "Pods chosen for requests with a text, by ModelServer, routing strategy and "
            "outcome: hit (the chosen pod holds as much of the text as any), spill (another "
            "held more; load or LeastInFlight sent it elsewhere), miss (none held any).",
            ["namespace", "server", "strategy", "outcome"],
            registry=self.registry,
        )
        self.requests_by = Children(self.requests)
        """``requests_by(path, model, status)``."""
        self.in_flight_of = Children(self.in_flight)
        """``in_flight_of(namespace, server)``."""
        self._prefix_match_of = Children(self.prefix_match)
        self._routing_decisions_of = Children(self.routing_decisions)

    def observe_route(
        self, server: tuple[str, str], strategy: str, share: float, outcome: str
    ) -> None:
        """One choice of a pod: the share of the request's prefix the chosen pod holds and
        what the choice did with it (``affinity.routing_outcome``)."""
        namespace, name = server
        self._prefix_match_of(namespace, name, strategy).observe(share)
        self._routing_decisions_of(namespace, name, strategy, outcome).inc()

    def observe_idle_deadline(self, server: tuple[str, str], deadline: datetime | None) -> None:
        namespace, name = server
        if deadline is None:
            with contextlib.suppress(KeyError):
                self.idle_deadline.remove(namespace, name)
        elif deadline >= FOREVER:
            self.idle_deadline.labels(namespace=namespace, server=name).set(math.inf)
        else:
            self.idle_deadline.labels(namespace=namespace, server=name).set(deadline.timestamp())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
