"""The gateway's backend on Kubernetes: list-and-watch ModelServers, Models, the runtime
Services' Endpoints (and the API-key Secret) in background threads with the ``kubernetes``
client; rebuild the routing table on every change and hand it to the event loop. Writes (scale,
activity) run in worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch
from kubernetes.client.exceptions import ApiException

from corral_operator import api
from corral_operator.gateway.auth import keys_from_secret
from corral_operator.gateway.backend import ActivityReport, KeysListener, SnapshotListener
from corral_operator.gateway.settings import GatewaySettings
from corral_operator.gateway.topology import ServerKey, build_snapshot
from corral_operator.kube import Kube

log = logging.getLogger(__name__)

_WATCH_SECONDS = 60
_SECRET_POLL_SECONDS = 30
_RUNTIME_SELECTOR = f"{api.LABEL_NAME}={api.RUNTIME_APP}"

Store = dict[tuple[str, str], dict[str, Any]]


def api_client(settings: GatewaySettings) -> k8s.ApiClient:
    if settings.kubeconfig is not None:
        return k8s_config.new_client_from_config(  # type: ignore[no-any-return,no-untyped-call]
            config_file=str(settings.kubeconfig)
        )
    k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    return k8s.ApiClient()


class ClusterBackend:
    def __init__(self, settings: GatewaySettings, client: k8s.ApiClient | None = None) -> None:
        self.settings = settings
        self.client = client or api_client(settings)
        self.kube = Kube(self.client)
        self._stores: dict[str, Store] = {"servers": {}, "models": {}, "endpoints": {}}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watches: list[watch.Watch] = []
        self._written: dict[ServerKey, dict[str, str | None]] = {}

    # -- reading -----------------------------------------------------------------------------

    def start(self, on_snapshot: SnapshotListener, on_keys: KeysListener) -> None:
        loop = asyncio.get_running_loop()
        custom = k8s.CustomObjectsApi(self.client)
        core = k8s.CoreV1Api(self.client)

        def publish() -> None:
            with self._lock:
                snapshot = build_snapshot(
                    list(self._stores["servers"].values()),
                    list(self._stores["models"].values()),
                    list(self._stores["endpoints"].values()),
                )
            loop.call_soon_threadsafe(on_snapshot, snapshot)

        scopes: list[str | None] = list(self.settings.namespaces) or [None]
        for namespace in scopes:
            for store, plural in (("servers", api.MODELSERVERS), ("models", api.MODELS)):
                if namespace is None:
                    lister: Callable[..., Any] = custom.list_cluster_custom_object
                    args: dict[str, Any] = {
                        "group": api.GROUP,
                        "version": api.VERSION,
                        "plural": plural,
                    }
                else:
                    lister = custom.list_namespaced_custom_object
                    args = {
                        "group": api.GROUP,
                        "version": api.VERSION,
                        "namespace": namespace,
                        "plural": plural,
                    }
                self._spawn(store, namespace, lister, args, publish)
            if namespace is None:
                self._spawn(
                    "endpoints",
                    None,
                    core.list_endpoints_for_all_namespaces,
                    {"label_selector": _RUNTIME_SELECTOR},
                    publish,
                )
            else:
                self._spawn(
                    "endpoints",
                    namespace,
                    core.list_namespaced_endpoints,
                    {"namespace": namespace, "label_selector": _RUNTIME_SELECTOR},
                    publish,
                )
        if self.settings.api_key_secret:
            thread = threading.Thread(
                target=self._poll_keys,
                args=(core, loop, on_keys),
                name="gateway-api-keys",
                daemon=True,
            )
            thread.start()
        else:
            on_keys(frozenset(self.settings.api_keys))

    def _poll_keys(
        self, core: k8s.CoreV1Api, loop: asyncio.AbstractEventLoop, on_keys: KeysListener
    ) -> None:
        """Read the API-key Secret now and then (a get by name is all the gateway may do)."""
        namespace, _, name = (self.settings.api_key_secret or "").partition("/")
        while not self._stopped.is_set():
            try:
                secret = core.read_namespaced_secret(name, namespace)
                data = {
                    key: base64.b64decode(value).decode("utf-8", "replace")
                    for key, value in (secret.data or {}).items()
                }
                keys = keys_from_secret(data) | frozenset(self.settings.api_keys)
                loop.call_soon_threadsafe(on_keys, keys)
            except Exception as exc:
                # Keep the keys we have: a read failure must not open the gateway.
                log.warning("reading API keys from %s/%s failed: %s", namespace, name, exc)
            self._stopped.wait(_SECRET_POLL_SECONDS)

    def _spawn(
        self,
        store: str,
        namespace: str | None,
        lister: Callable[..., Any],
        args: dict[str, Any],
        publish: Callable[[], None],
    ) -> None:
        thread = threading.Thread(
            target=self._watch_forever,
            args=(store, namespace, lister, args, publish),
            name=f"gateway-watch-{store}-{namespace or 'all'}",
            daemon=True,
        )
        thread.start()

    def _replace(self, store: str, namespace: str | None, items: list[dict[str, Any]]) -> None:
        with self._lock:
            target = self._stores[store]
            for key in [k for k in target if namespace is None or k[0] == namespace]:
                del target[key]
            for item in items:
                meta = item["metadata"]
                target[(meta["namespace"], meta["name"])] = item

    def _apply_event(self, store: str, kind: str, item: dict[str, Any]) -> None:
        meta = item["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if kind == "DELETED":
                self._stores[store].pop(key, None)
            else:
                self._stores[store][key] = item

    def _watch_forever(
        self,
        store: str,
        namespace: str | None,
        lister: Callable[..., Any],
        args: dict[str, Any],
        publish: Callable[[], None],
    ) -> None:
        """List, then watch from the list's resourceVersion; relist when the watch expires."""

        def sanitize(obj: Any) -> dict[str, Any]:
            # Custom objects arrive as dicts, core ones as models: one shape for both.
            return dict(self.client.sanitize_for_serialization(obj))  # type: ignore[no-untyped-call]

        while not self._stopped.is_set():
            try:
                listing = sanitize(lister(**args))
                self._replace(store, namespace, list(listing.get("items") or ()))
                publish()
                version = listing["metadata"]["resourceVersion"]
                while not self._stopped.is_set():
                    watcher = watch.Watch()  # type: ignore[no-untyped-call]
                    self._watches.append(watcher)
                    try:
                        for event in watcher.stream(  # type: ignore[no-untyped-call]
                            lister,
                            resource_version=version,
                            timeout_seconds=_WATCH_SECONDS,
                            allow_watch_bookmarks=True,
                            **args,
                        ):
                            item = sanitize(event["object"])
                            kind = event["type"]
                            if kind == "ERROR":
                                raise ApiException(status=int(item.get("code") or 500))
                            version = item["metadata"]["resourceVersion"]
                            if kind == "BOOKMARK":
                                continue
                            self._apply_event(store, kind, item)
                            publish()
                    finally:
                        self._watches.remove(watcher)
            except Exception as exc:
                if self._stopped.is_set():
                    return
                # 410 Gone (history expired) and connection trouble alike: relist.
                log.warning("watch of %s in %s restarts: %s", store, namespace or "all", exc)
                self._stopped.wait(1.0)

    async def stop(self) -> None:
        self._stopped.set()
        for watcher in list(self._watches):
            watcher.stop()  # type: ignore[no-untyped-call]

    # -- writing -----------------------------------------------------------------------------

    async def scale(self, server: ServerKey, replicas: int, now: datetime) -> None:
        """Wake a server: record the activity and read its replicas at once (two independent
        calls, concurrent: a wake-up from zero waits for one round trip where it waited for
        two), then raise its replicas. The activity is written before the scale, so that the
        keep-alive cannot take the wake-up for idleness."""
        namespace, name = server
        _, current = await asyncio.gather(
            asyncio.to_thread(self._set_last_request_time, namespace, name, now),
            asyncio.to_thread(self.kube.read_replicas, "ModelServer", namespace, name),
        )
        await asyncio.to_thread(self._raise_replicas, server, current, replicas, now)

    def _raise_replicas(
        self, server: ServerKey, current: int | None, replicas: int, now: datetime
    ) -> None:
        namespace, name = server
        if current is None or current < replicas:
            log.info("scaling %s/%s to %d", namespace, name, replicas)
            self.kube.scale("ModelServer", namespace, name, replicas, unset=current is None)
        else:
            # Replicas were asked for already but none run (the operator's keep-alive scaled
            # the Deployment down alone): a metadata write makes it reconcile now.
            self.kube.annotate(
                "ModelServer", namespace, name, {api.ANNOTATION_WAKE: api.rfc3339(now)}
            )

    async def report_activity(self, server: ServerKey, report: ActivityReport) -> None:
        await asyncio.to_thread(self._report, server, report)

    def _report(self, server: ServerKey, report: ActivityReport) -> None:
        namespace, name = server
        try:
            self._set_last_request_time(namespace, name, report.last_request_time)
            annotations: dict[str, str | None] = {
                api.ANNOTATION_IN_FLIGHT: str(report.in_flight) if report.in_flight else None,
                api.ANNOTATION_IDLE_DEADLINE: (
                    api.rfc3339(report.idle_deadline) if report.idle_deadline else None
                ),
            }
            # Metadata writes wake the operator's handlers: only when something changed.
            if self._written.get(server) != annotations:
                self.kube.annotate("ModelServer", namespace, name, annotations)
                self._written[server] = annotations
        except ApiException as exc:
            if exc.status != 404:  # the server was deleted meanwhile
                raise

    def _set_last_request_time(self, namespace: str, name: str, moment: datetime) -> None:
        # A plain merge patch, not Kube.patch_status: a deleted server's 404 must reach the
        # caller (a wake-up fails; a report ends there).
        self.kube.merge_patch(
            "ModelServer",
            namespace,
            name,
            {"status": {"lastRequestTime": api.rfc3339(moment)}},
            "status",
        )
