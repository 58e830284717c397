"""The gateway's live state: the current routing table, requests in flight per pod, requests
held per model, and the activity of each server.

It answers "which pod takes this request" (the one most likely to hold its prefix in a KV
cache, weighed against load, or least in flight, as the server's routing strategy says), holds
requests whose server has no ready pod while asking for a scale-up, and writes activity at most
once per interval per server.
All of it runs on the event loop; the backend delivers routing tables onto it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import Collection, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from corral_operator import api
from corral_operator.gateway.affinity import (
    LEAST_IN_FLIGHT,
    Prefix,
    PrefixIndex,
    pick_cache_aware,
    prefix_hashes,
    routing_outcome,
)
from corral_operator.gateway.backend import ActivityReport, Backend
from corral_operator.gateway.decisions import (
    ModelKeep,
    decide_scale_up,
    early_endpoints,
    may_hold,
    pick_endpoint,
    server_idle_deadline,
    should_flush_activity,
)
from corral_operator.gateway.metrics import GatewayMetrics
from corral_operator.gateway.priority import (
    DEFAULT_AGING_SECONDS,
    DEFAULT_PRIORITY,
    release_order,
)
from corral_operator.gateway.protocol import normalize_model_name
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.topology import ModelEntry, ServerKey, ServerView, Snapshot

log = logging.getLogger(__name__)

# The runtime's gauge of its last inference request: direct traffic to a pod counts as activity.
_POD_ACTIVITY_METRIC = "corral_last_request_timestamp_seconds"
# How often a server that was asked for replicas yet shows no pod is woken again.
WAKE_RETRY_SECONDS = 10.0
# A starting pod with requests waiting for it is probed this often (a refused connection or a
# 503 costs next to nothing); once it answers it takes requests before the cluster marks it
# Ready (the kubelet probes once a second, then status and Endpoints have to follow), for as
# long as PROBE_TRUST_SECONDS.
PROBE_INTERVAL_SECONDS = 0.05
PROBE_TRUST_SECONDS = 30.0


class QueueFullError(Exception):
    """The model's hold queue is full."""


@dataclass
class _Activity:
    last: float | None = None
    flushed: float | None = None
    last_flush: float | None = None
    models: dict[str, ModelKeep] = field(default_factory=dict)
    """The keep_alive of each model's latest request (the key "" stands for direct traffic)."""
    idle_since: float = float("-inf")
    """When the server last had nothing in flight: models touched since were in this burst."""

    def settle(self, now: float) -> None:
        """Nothing is in flight any more: the models of this burst were active until now."""
        for name, keep in self.models.items():
            if keep.last >= self.idle_since:
                self.models[name] = ModelKeep(keep.keep_alive, now)
        self.idle_since = now


class Dispatcher:
    def __init__(
        self,
        settings: GatewaySettings,
        backend: Backend,
        metrics: GatewayMetrics,
        client: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = metrics
        self.client = client
        self.snapshot = Snapshot()
        self.api_keys: frozenset[str] = frozenset(settings.api_keys)
        self.in_flight: Counter[str] = Counter()
        self.server_in_flight: Counter[ServerKey] = Counter()
        self.held: Counter[str] = Counter()
        self.server_held: Counter[ServerKey] = Counter()
        self._changed = asyncio.Event()
        # Held requests waiting for a pod, each with the future that wakes it.
        self._held_waiting: list[tuple[Hold, asyncio.Future[None]]] = []
        self._turn = 0
        self._activity: dict[ServerKey, _Activity] = {}
        self._scale_asked: dict[ServerKey, int] = {}
        self._woken_at: dict[ServerKey, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._probed: dict[ServerKey, dict[str, float]] = {}
        self._probes: dict[tuple[ServerKey, str], asyncio.Task[None]] = {}
        self._prefixes: dict[ServerKey, PrefixIndex] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.backend.start(self.update, self.set_keys)
        self._loop_task = asyncio.create_task(self._activity_loop())

    async def stop(self) -> None:
        for task in [*self._probes.values(), *([self._loop_task] if self._loop_task else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush_activity(force=True)
        await self.backend.stop()

    def update(self, snapshot: Snapshot) -> None:
        """A new routing table: wake every held request to look again."""
        self.snapshot = snapshot
        for key, asked in list(self._scale_asked.items()):
            view = snapshot.servers.get(key)
            if view is None or view.desired >= asked or view.desired == 0:
                # Reached, gone, or scaled down since: a new demand may ask again.
                del self._scale_asked[key]
        for key, probed in list(self._probed.items()):
            view = snapshot.servers.get(key)
            # Ready (now in the endpoints) or gone: the probe's word is no longer needed.
            kept = {e: t for e, t in probed.items() if view is not None and e in view.starting}
            if kept:
                self._probed[key] = kept
            else:
                del self._probed[key]
        self._forget_prefixes(snapshot)
        self._notify()
        for key in list(self.server_held):
            if self.server_held[key] > 0:
                self._consider_scaling(key, "hold")
                self._probe_starting(key)

    def _notify(self) -> None:
        """Wake every waiting request to look for a pod again; held ones in their release
        order (see ``_release_held``)."""
        self._changed.set()
        self._changed = asyncio.Event()
        self._release_held()

    def _release_held(self) -> None:
        """Wake the held requests of each server in ``priority.release_order``: a task woken
        first runs first, so it picks a pod and sends its request before the others."""
        waiting, self._held_waiting = self._held_waiting, []
        now = time.monotonic()
        for key in dict.fromkeys(hold.key for hold, _ in waiting):
            view = self.snapshot.servers.get(key)
            aging = view.priority.aging_s if view is not None else DEFAULT_AGING_SECONDS
            mine = [(hold, woken) for hold, woken in waiting if hold.key == key]
            held = [(hold.priority, now - hold.started) for hold, _ in mine]
            for index in release_order(held, aging):
                woken = mine[index][1]
                if not woken.done():
                    woken.set_result(None)

    def set_keys(self, keys: frozenset[str]) -> None:
        self.api_keys = keys

    # -- routing -----------------------------------------------------------------------------

    def resolve(self, model: str) -> ModelEntry | None:
        """The entry that serves ``model``: one with ready pods if any, else the first."""
        entries = self.snapshot.lookup(model)
        for entry in entries:
            view = self.snapshot.servers.get(entry.server)
            if view is not None and view.serving:
                return entry
        return entries[0] if entries else None

    def server(self, key: ServerKey) -> ServerView | None:
        return self.snapshot.servers.get(key)

    def try_pick(
        self, key: ServerKey, exclude: Collection[str] = (), prefix: Prefix = ()
    ) -> str | None:
        """The pod for a request whose text hashes to ``prefix`` (``prefix_of``), as the
        server's routing strategy decides; None while no pod may take it. A choice for a
        prefix is counted in the prefix-match metrics, whichever the strategy."""
        view = self.snapshot.servers.get(key)
        if view is None:
            return None
        self._turn += 1
        endpoints = self.routable(view)
        index = self._prefixes.get(key)
        matched = {e: index.matched(e, prefix) for e in endpoints} if prefix and index else {}
        if view.routing == LEAST_IN_FLIGHT or not prefix or len(endpoints) < 2:
            chosen = pick_endpoint(endpoints, self.in_flight, exclude, self._turn)
        else:
            chosen = pick_cache_aware(
                endpoints, self.in_flight, matched, len(prefix), exclude, self._turn
            )
        if prefix and chosen is not None:
            outcome = routing_outcome(endpoints, matched, chosen, exclude)
            share = matched.get(chosen, 0) / len(prefix)
            self.metrics.observe_route(key, view.routing, share, outcome)
        return chosen

    def prefix_of(self, key: ServerKey, model: str, text: str) -> Prefix:
        """The chained hashes of a request's text. LeastInFlight servers have them too (about
        70 µs for 4 KB of text, 0.4 ms at the 32 k characters hashed at most), so their
        prefix-match metrics say what routing by load alone loses."""
        if key not in self.snapshot.servers:
            return ()
        return prefix_hashes(normalize_model_name(model), text)

    def _forget_prefixes(self, snapshot: Snapshot) -> None:
        """Servers and pods that left the routing table take their estimated caches along."""
        for key, index in list(self._prefixes.items()):
            view = snapshot.servers.get(key)
            if view is None:
                del self._prefixes[key]
            else:
                index.keep_only({*view.endpoints, *view.starting})

    def routable(self, view: ServerView) -> tuple[str, ...]:
        """Pods that may take a request: the ready ones, and starting ones that answered the
        gateway's own readiness probe."""
        probed = self._probed.get(view.key)
        if not probed or view.desired == 0:
            return view.serving
        early = early_endpoints(view.starting, probed, time.monotonic(), PROBE_TRUST_SECONDS)
        return view.serving + early

    async def wait_for_endpoint(
        self, key: ServerKey, exclude: Collection[str], until: float, hold: Hold | None = None
    ) -> str | None:
        """A pod for ``key`` as soon as one is ready, or None at ``until`` (loop time). A
        ``hold``'s request is woken in its release order among the server's held requests."""
        loop = asyncio.get_running_loop()
        while True:
            endpoint = self.try_pick(key, exclude)
            if endpoint is not None:
                return endpoint
            remaining = until - loop.time()
            if remaining <= 0:
                return None
            if hold is None:
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
                continue
            woken: asyncio.Future[None] = loop.create_future()
            entry = (hold, woken)
            self._held_waiting.append(entry)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, remaining)
            finally:
                with contextlib.suppress(ValueError):
                    self._held_waiting.remove(entry)

    def hold(self, model: str, key: ServerKey, priority: str = DEFAULT_PRIORITY) -> Hold:
        """A place in the model's hold queue (QueueFullError when there is none); asks for a
        scale-up. Release it once the request has a pod or has failed."""
        name = normalize_model_name(model)
        if not may_hold(self.held[name], self.settings.hold_queue_size):
            self.metrics.rejected.labels(model=name, reason="queue_full").inc()
            raise QueueFullError(name)
        self.held[name] += 1
        self.server_held[key] += 1
        self.metrics.held.labels(model=name).set(self.held[name])
        self.metrics.held_by_priority.labels(model=name, priority=priority).inc()
        self.touch(key)
        self._consider_scaling(key, "hold")
        self._probe_starting(key)
        return Hold(self, name, key, priority)

    def _unhold(self, name: str, key: ServerKey, seconds: float, priority: str) -> None:
        self.held[name] -= 1
        self.server_held[key] -= 1
        self.metrics.held.labels(model=name).set(self.held[name])
        self.metrics.hold_seconds.labels(model=name).observe(seconds)
        self.metrics.held_by_priority.labels(model=name, priority=priority).dec()
        self.metrics.hold_seconds_by_priority.labels(model=name, priority=priority).observe(seconds)
        # News for the activity record: a held request that failed is no longer in flight (its
        # count would otherwise stay on the server until it went stale).
        self.touch(key)

    def lease(self, key: ServerKey, endpoint: str, prefix: Prefix = ()) -> Lease:
        """One request in flight on ``endpoint``: counted for the picker, the load-based
        scale-up and the keep-alive until released; its ``prefix`` is now (likely) in that
        pod's cache."""
        if prefix:
            self._prefixes.setdefault(key, PrefixIndex()).record(endpoint, prefix)
        self.in_flight[endpoint] += 1
        self.server_in_flight[key] += 1
        self.metrics.in_flight_of(*key).set(self.server_in_flight[key])
        self.touch(key)
        self._consider_scaling(key, "load")
        return Lease(self, key, endpoint)

    def _unlease(self, key: ServerKey, endpoint: str) -> None:
        self.in_flight[endpoint] -= 1
        if self.in_flight[endpoint] <= 0:
            del self.in_flight[endpoint]
        self.server_in_flight[key] -= 1
        self.metrics.in_flight_of(*key).set(self.server_in_flight[key])
        self.touch(key)
        if self.server_in_flight[key] <= 0 and self.server_held[key] <= 0:
            # A model's keep_alive counts from the end of its requests, as in Ollama.
            self._activity[key].settle(time.time())

    # -- scaling -----------------------------------------------------------------------------

    def _consider_scaling(self, key: ServerKey, reason: str) -> None:
        view = self.snapshot.servers.get(key)
        if view is None or not view.scalable:
            return
        asked = self._scale_asked.get(key, 0)
        wanted = decide_scale_up(
            desired=max(view.desired, asked),
            ready=len(view.serving),
            in_flight=self.server_in_flight[key],
            held=self.server_held[key],
            target_per_pod=self.settings.target_in_flight_per_pod,
            min_replicas=view.min_replicas,
            max_replicas=view.max_replicas,
        )
        if wanted is None and view.desired > 0 and not view.endpoints and asked == 0:
            # Asked for, yet no pod: the operator may have scaled the Deployment down on its
            # own keep-alive without touching spec.replicas. Ask again; the write wakes it. A
            # pod that is merely starting looks the same, and every routing-table change while
            # it starts comes here: wake at most once per WAKE_RETRY_SECONDS.
            now = time.monotonic()
            if now - self._woken_at.get(key, -WAKE_RETRY_SECONDS) < WAKE_RETRY_SECONDS:
                return
            self._woken_at[key] = now
            wanted = max(view.desired, 1)
        if wanted is None:
            return
        self._scale_asked[key] = wanted
        self.metrics.scale_events.labels(namespace=key[0], server=key[1], reason=reason).inc()
        self._spawn(self._scale(key, wanted))

    async def _scale(self, key: ServerKey, replicas: int) -> None:
        try:
            await self.backend.scale(key, replicas, datetime.now(UTC))
            self._mark_flushed(key)
        except Exception:
            log.exception("scaling %s/%s to %d failed", key[0], key[1], replicas)
            self._scale_asked.pop(key, None)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- probing starting pods ---------------------------------------------------------------

    def _probe_starting(self, key: ServerKey) -> None:
        """Probe each starting pod of a server that has requests waiting (once at a time)."""
        view = self.snapshot.servers.get(key)
        if not self.settings.probe_starting_pods or view is None or view.desired == 0:
            return
        probed = self._probed.get(key, {})
        now = time.monotonic()
        for endpoint in view.starting:
            if (key, endpoint) in self._probes or endpoint in early_endpoints(
                (endpoint,), probed, now, PROBE_TRUST_SECONDS
            ):
                continue
            task = asyncio.create_task(self._probe(key, endpoint))
            self._probes[(key, endpoint)] = task
            task.add_done_callback(functools.partial(self._probe_done, (key, endpoint)))

    def _probe_done(self, probe: tuple[ServerKey, str], _: asyncio.Task[None]) -> None:
        self._probes.pop(probe, None)

    async def _probe(self, key: ServerKey, endpoint: str) -> None:
        """Until the pod answers its readiness probe, leaves the starting list, or nobody waits
        for its server any longer."""
        while self.server_held[key] > 0:
            view = self.snapshot.servers.get(key)
            if view is None or endpoint not in view.starting:
                return
            if await self._answers_ready(endpoint):
                log.info("%s of %s/%s answers its readiness probe: routing to it", endpoint, *key)
                self._probed.setdefault(key, {})[endpoint] = time.monotonic()
                self._notify()
                return
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)

    async def _answers_ready(self, endpoint: str) -> bool:
        """The runtime's readiness probe (the one the kubelet asks), asked by the gateway."""
        try:
            async with self.client.get(
                f"http://{endpoint}/readyz", timeout=aiohttp.ClientTimeout(total=1.0)
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    # -- activity ----------------------------------------------------------------------------

    def touch(
        self, key: ServerKey, keep_alive: float | None = None, model: str | None = None
    ) -> None:
        """Record activity now; a request for ``model`` sets that model's ``keep_alive``
        (seconds, ``inf`` for forever; None: the server's keepAliveSeconds), as in Ollama."""
        activity = self._activity.get(key)
        if activity is None:  # not setdefault: that builds an _Activity on every call
            activity = self._activity[key] = _Activity()
        activity.last = time.time()
        if model is not None:
            activity.models[normalize_model_name(model)] = ModelKeep(keep_alive, activity.last)

    def idle_deadline(self, key: ServerKey) -> datetime | None:
        """When every model of the server has expired by its requests' keep_alive (None: no
        request set one), bounded by the ModelServer's maxKeepAliveSeconds."""
        activity = self._activity.get(key)
        if activity is None:
            return None
        view = self.snapshot.servers.get(key)
        default = api.DEFAULT_KEEP_ALIVE_SECONDS
        keep_alive = float(default if view is None else view.keep_alive_seconds)
        bound = (
            view.max_keep_alive_seconds
            if view is not None and view.scalable
            else self.settings.max_keep_alive_seconds
        )
        return server_idle_deadline(
            activity.models, keep_alive_seconds=keep_alive, max_keep_alive_seconds=bound
        )

    def scale_down_at(self, key: ServerKey) -> datetime | None:
        """When the server goes to zero replicas if no request comes: its idle deadline, or
        keepAliveSeconds after its last request where no request set a keep_alive. None where
        it does not go to zero (minReplicas above 0, not idle-scaled, never asked, forever)."""
        view = self.snapshot.servers.get(key)
        activity = self._activity.get(key)
        if view is None or not view.scalable or view.min_replicas > 0:
            return None
        if activity is None or activity.last is None:
            return None
        deadline = self.idle_deadline(key)
        if deadline is None and all(m.keep_alive is None for m in activity.models.values()):
            return datetime.fromtimestamp(activity.last + view.keep_alive_seconds, UTC)
        return None if deadline == api.FOREVER else deadline

    def _mark_flushed(self, key: ServerKey) -> None:
        # scale() recorded the activity of this moment already.
        activity = self._activity.setdefault(key, _Activity())
        activity.flushed = activity.last
        activity.last_flush = time.monotonic()

    async def flush_activity(self, force: bool = False) -> None:
        now = time.monotonic()
        for key, activity in list(self._activity.items()):
            in_flight = self.server_in_flight[key] + self.server_held[key]
            due = should_flush_activity(
                now=now,
                last_flush=None if force else activity.last_flush,
                interval=self.settings.activity_interval_seconds,
                activity=activity.last,
                flushed_activity=activity.flushed,
                in_flight=in_flight,
            )
            if not due or activity.last is None:
                continue
            # Requests in flight are activity happening now.
            last = time.time() if in_flight else activity.last
            deadline = self.idle_deadline(key)
            self.metrics.observe_idle_deadline(key, deadline)
            report = ActivityReport(
                last_request_time=datetime.fromtimestamp(last, UTC),
                idle_deadline=deadline,
                in_flight=in_flight,
            )
            try:
                await self.backend.report_activity(key, report)
            except Exception:
                log.exception("recording activity of %s/%s failed", key[0], key[1])
                continue
            activity.flushed = last
            activity.last_flush = now

    async def scrape_pods(self) -> None:
        """Fold each ready pod's own last-request time (direct traffic) into the activity."""
        for key, view in list(self.snapshot.servers.items()):
            if not view.scalable:
                continue
            for endpoint in view.endpoints:
                stamp = await self._pod_last_request(endpoint)
                activity = self._activity.setdefault(key, _Activity())
                if stamp and (activity.last is None or stamp > activity.last):
                    activity.last = stamp
                    if not self.server_in_flight[key] and not self.server_held[key]:
                        # Not the gateway's own requests: direct traffic keeps the server
                        # up for keepAliveSeconds.
                        activity.models[""] = ModelKeep(None, stamp)

    async def _pod_last_request(self, endpoint: str) -> float | None:
        try:
            async with self.client.get(
                f"http://{endpoint}/metrics", timeout=aiohttp.ClientTimeout(total=2.0)
            ) as response:
                if response.status != 200:
                    return None
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        for family in text_string_to_metric_families(text):
            if family.name == _POD_ACTIVITY_METRIC:
                for sample in family.samples:
                    return float(sample.value) or None
        return None

    async def _activity_loop(self) -> None:
        interval = self.settings.activity_interval_seconds
        next_scrape = 0.0
        while True:
            await asyncio.sleep(min(1.0, interval / 2))
            if time.monotonic() >= next_scrape:
                next_scrape = time.monotonic() + interval
                await self.scrape_pods()
            await self.flush_activity()


class Hold:
    """A held request's place in its model's queue; ``release`` is idempotent."""

    def __init__(
        self, dispatcher: Dispatcher, name: str, key: ServerKey, priority: str = DEFAULT_PRIORITY
    ) -> None:
        self._dispatcher, self._name, self.key = dispatcher, name, key
        self.priority = priority
        self.started = time.monotonic()
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            seconds = time.monotonic() - self.started
            self._dispatcher._unhold(self._name, self.key, seconds, self.priority)


class Lease:
    """A request in flight on one pod; ``release`` is idempotent."""

    def __init__(self, dispatcher: Dispatcher, key: ServerKey, endpoint: str) -> None:
        self._dispatcher, self._key, self.endpoint = dispatcher, key, endpoint
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._dispatcher._unlease(self._key, self.endpoint)
