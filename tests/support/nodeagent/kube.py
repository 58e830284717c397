"""Thin access to the Kubernetes API as plain dicts, a watched cache of a node's pods, and the
lookups (Secrets, ConfigMaps, claim directories) that pod specs refer to."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from .podspec import decode_secret

log = logging.getLogger("nodeagent.kube")
# The kubernetes package is only partly typed; these modules are used through Any on purpose.
_config: Any = config
_watch: Any = watch
MERGE_PATCH = "application/merge-patch+json"


def api_client(kubeconfig: Path) -> Any:
    return _config.new_client_from_config(config_file=str(kubeconfig))


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a generated API method and return the response body as a dict (no models)."""
    response = call(*args, _preload_content=False, **kwargs)
    data: dict[str, Any] = json.loads(response.data or b"{}")
    return data


def ignore_status(
    codes: tuple[int, ...], call: Callable[..., Any], *args: Any, **kwargs: Any
) -> dict[str, Any] | None:
    """``raw`` that answers None for the given HTTP statuses (404, 409, …)."""
    try:
        return raw(call, *args, **kwargs)
    except ApiException as error:
        if error.status in codes:
            return None
        raise


class PodCache:
    """The pods bound to one node, kept current by list-then-watch in a background thread."""

    def __init__(self, api: Any, node: str) -> None:
        self.core = client.CoreV1Api(api)
        self.node = node
        self.changed = threading.Event()
        self._pods: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._watch: Any = None
        self._thread = threading.Thread(target=self._run, name=f"pods-{node}", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._synced.wait(timeout):
            raise TimeoutError(f"could not list the pods of node {self.node}")

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._pods)

    def _run(self) -> None:
        selector = f"spec.nodeName={self.node}"
        while not self._stop.is_set():
            try:
                listing = raw(self.core.list_pod_for_all_namespaces, field_selector=selector)
                with self._lock:
                    self._pods = {p["metadata"]["uid"]: p for p in listing.get("items", [])}
                self._synced.set()
                self.changed.set()
                self._watch = _watch.Watch()
                for event in self._watch.stream(
                    self.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=60,
                    deserialize=False,
                ):
                    pod = event["raw_object"] if "raw_object" in event else event["object"]
                    uid = pod.get("metadata", {}).get("uid")
                    if uid is None:
                        continue
                    with self._lock:
                        if event["type"] == "DELETED":
                            self._pods.pop(uid, None)
                        else:
                            self._pods[uid] = pod
                    self.changed.set()
                    if self._stop.is_set():
                        break
            except Exception as error:  # the API may be briefly away; relist after a pause
                if not self._stop.is_set():
                    log.warning("pod watch for %s failed (%s); relisting", self.node, error)
                    time.sleep(1.0)


class Lookups:
    """Secrets, ConfigMaps and claim directories, read from the API on demand."""

    def __init__(self, api: Any) -> None:
        self.core = client.CoreV1Api(api)

    def data(self, kind: str, namespace: str, name: str) -> Mapping[str, str] | None:
        if kind == "Secret":
            obj = ignore_status((404,), self.core.read_namespaced_secret, name, namespace)
            return decode_secret(obj) if obj is not None else None
        obj = ignore_status((404,), self.core.read_namespaced_config_map, name, namespace)
        if obj is None:
            return None
        return dict(obj.get("data") or {})

    def api_endpoint(self) -> tuple[str, int] | None:
        """The API server's address for pods: the first address and port of the ``kubernetes``
        Endpoints (what kube-proxy would send the Service's ClusterIP to)."""
        obj = ignore_status((404,), self.core.read_namespaced_endpoints, "kubernetes", "default")
        return kubernetes_endpoint(obj or {})

    def claim_dir(self, namespace: str, claim: str) -> Path | None:
        pvc = ignore_status(
            (404,), self.core.read_namespaced_persistent_volume_claim, claim, namespace
        )
        if pvc is None or pvc.get("status", {}).get("phase") != "Bound":
            return None
        pv = ignore_status((404,), self.core.read_persistent_volume, pvc["spec"]["volumeName"])
        if pv is None:
            return None
        spec = pv.get("spec", {})
        source = spec.get("hostPath") or spec.get("local")
        if source is None:
            return None
        return Path(source["path"])


def kubernetes_endpoint(endpoints: Mapping[str, Any]) -> tuple[str, int] | None:
    """(ip, port) of the first ready address of an Endpoints object, None when it has none."""
    for subset in endpoints.get("subsets") or ():
        addresses, ports = subset.get("addresses") or (), subset.get("ports") or ()
        if addresses and ports:
            return str(addresses[0]["ip"]), int(ports[0]["port"])
    return None
