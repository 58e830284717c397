"""Prometheus metrics of one runtime server, in a registry of its own (not the global one), so
that several apps in one process (tests) never share counters.

Model labels name models this server has loaded, by their full name: any other name a client
sends (a typo, a model it does not have, a random string) counts under ``unknown``, so clients
cannot grow the number of series without bound.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from corral_runtime.engine.priority import PRIORITY_CLASSES
from corral_runtime.store.names import InvalidNameError, parse_name

if TYPE_CHECKING:
    from corral_runtime.engine.manager import LoadedModel

CONTENT_TYPE = CONTENT_TYPE_LATEST

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The label of a request for a model this server has not loaded.
UNKNOWN_MODEL = "unknown"


class DecodeCounts(Collector):
    """Each loaded model's decode steps and the llama.cpp computations they took, as counted by
    its decode thread and read when metrics are scraped: llama.cpp computes each run of
    consecutive sequence ids in a batch apart (each another pass over the weights), so
    computations over steps above 1 shows decoding sequences scattered over the slots."""

    def __init__(self) -> None:
        self.counts: dict[str, tuple[int, int]] = {}

    def collect(self) -> Iterator[Metric]:
        steps = CounterMetricFamily(
            "corral_decode_steps",
            "Decode steps (one token for every decoding sequence), per loaded model.",
            labels=["model"],
        )
        computations = CounterMetricFamily(
            "corral_decode_computations",
            "llama.cpp computations of those steps (one per run of consecutive sequence ids).",
            labels=["model"],
        )
        for model, (step_count, computation_count) in self.counts.items():
            steps.add_metric([model], step_count)
            computations.add_metric([model], computation_count)
        yield steps
        yield computations


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decode_counts = DecodeCounts()
        self.registry.register(self.decode_counts)
        # The full names of the models loaded since the start, by their case-folded form.
        self._known: dict[str, str] = {}
        self.requests = Counter(
            "corral_requests_total",
            "Requests answered, by endpoint, model and status code.",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "corral_time_to_first_token_seconds",
            "From accepting a generation to its first token.",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.time_per_output_token = Histogram(
            "corral_time_per_output_token_seconds",
            "Decode time per generated token.",
            ["model"],
            buckets=_TPOT_BUCKETS,
            registry=self.registry,
        )
        self.tokens_generated = Counter(
            "corral_tokens_generated_total",
            "Tokens generated.",
            ["model"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "corral_prompt_tokens_total",
            "Prompt tokens evaluated.",
            ["model"],
            registry=self.registry,
        )
        self.loaded_models = Gauge(
            "corral_loaded_models",
            "Model loads in memory now: names that share one (an alias, the same weights and"
            " load options) count once.",
            registry=self.registry,
        )
        self.loaded_model_names = Gauge(
            "corral_loaded_model_names",
            "Model names loaded now, each name on a shared load counted.",
            registry=self.registry,
        )
        self.pending_requests = Gauge(
            "corral_pending_requests",
            "Requests generating or waiting, per loaded model.",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "corral_queue_depth",
            "Requests waiting for a free slot, per loaded model.",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth_by_priority = Gauge(
            "corral_queue_depth_by_priority",
            "Requests waiting for a free slot, per loaded model and priority class.",
            ["model", "priority"],
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "corral_queue_wait_seconds",
            "From accepting a generation to its taking a slot, per priority class.",
            ["model", "priority"],
            buckets=_TTFT_BUCKETS,
            registry=self.registry,
        )
        self.busy_slots = Gauge(
            "corral_busy_slots",
            "Slots generating now, per loaded model.",
            ["model"],
            registry=self.registry,
        )
        self.slots = Gauge(
            "corral_slots",
            "Slots (requests decoded at once, reserved ones included), per loaded model.",
            ["model"],
            registry=self.registry,
        )
        self.model_load_seconds = Histogram(
            "corral_model_load_seconds",
            "Time to load a model.",
            ["model"],
            buckets=_LOAD_BUCKETS,
            registry=self.registry,
        )
        self.engine_failures = Counter(
            "corral_engine_failures_total",
            "Decode threads that died, per model (their requests failed; the model reloads).",
            ["model"],
            registry=self.registry,
        )
        self.last_request_time = Gauge(
            "corral_last_request_timestamp_seconds",
            "Unix time of the last inference request (for scale-to-zero).",
            registry=self.registry,
        )

    def know(self, model: str) -> None:
        """A model this server loaded: its name becomes a label value."""
        self._known[model.casefold()] = model

    def model_label(self, requested: str) -> str:
        """The label of a model a client named: its full name if this server has loaded it,
        ``unknown`` otherwise, and empty for no name."""
        if not requested:
            return ""
        try:
            name = parse_name(requested).display
        except InvalidNameError:
            return UNKNOWN_MODEL
        return self._known.get(name.casefold(), UNKNOWN_MODEL)

    def observe_loaded(self, models: Collection[LoadedModel]) -> None:
        """The loaded names (``ModelManager.loaded``): the loads they are on, which hold the
        memory (a name sharing another's load adds none), and the names themselves."""
        self.loaded_models.set(len({id(model.shared) for model in models}))
        self.loaded_model_names.set(len(models))

    def observe_load(self, model: str, seconds: float) -> None:
        self.know(model)
        self.model_load_seconds.labels(model=model).observe(seconds)

    def observe_request(self, endpoint: str, model: str, status: int) -> None:
        label = self.model_label(model)
        self.requests.labels(endpoint=endpoint, model=label, status=str(status)).inc()

    def touch(self) -> None:
        self.last_request_time.set(time.time())

    def observe_generation(
        self,
        model: str,
        *,
        ttft_s: float | None,
        prompt_tokens: int,
        eval_count: int,
        eval_seconds: float,
    ) -> None:
        if ttft_s is not None:
            self.time_to_first_token.labels(model=model).observe(ttft_s)
        if eval_count > 0:
            self.time_per_output_token.labels(model=model).observe(eval_seconds / eval_count)
        self.tokens_generated.labels(model=model).inc(eval_count)
        self.prompt_tokens.labels(model=model).inc(prompt_tokens)

    def observe_queue_wait(self, model: str, priority: str, seconds: float) -> None:
        self.queue_wait.labels(model=model, priority=priority).observe(seconds)

    def observe_engine(
        self,
        model: str,
        *,
        queued: int,
        busy: int,
        slots: int,
        queued_by_priority: Mapping[str, int] | None = None,
        decode_steps: int = 0,
        decode_computations: int = 0,
    ) -> None:
        """A loaded model's scheduler state, read when metrics are scraped; every priority
        class is given (waiting or not), so a dashboard sees zeros rather than gaps."""
        for priority in PRIORITY_CLASSES:
            depth = (queued_by_priority or {}).get(priority, 0)
            self.queue_depth_by_priority.labels(model=model, priority=priority).set(depth)
        self.decode_counts.counts[model] = (decode_steps, decode_computations)
        self.queue_depth.labels(model=model).set(queued)
        self.busy_slots.labels(model=model).set(busy)
        self.slots.labels(model=model).set(slots)

    def forget_engines(self) -> None:
        """Drop the per-model scheduler gauges (before setting those of the models loaded)."""
        for gauge in (self.queue_depth, self.queue_depth_by_priority, self.busy_slots, self.slots):
            gauge.clear()
        self.decode_counts.counts.clear()

    def render(self) -> bytes:
        return generate_latest(self.registry)
