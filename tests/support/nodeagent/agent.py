"""The node agent proper: registers a Node, keeps its heartbeat, and converges the pods bound to
it onto pod workers. Also a small volume provisioner, so PersistentVolumeClaims bind to local
directories the way a storage class would bind them to disks."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from .decisions import BoundPod, plan_sync
from .imagemap import ImageMap
from .kube import MERGE_PATCH, Lookups, PodCache, ignore_status, raw
from .kubelet import KubeletServer, worker_logs
from .network import Agent
from .nodeobj import NodeShape, lease_manifest, micro_time, node_manifest, node_status
from .worker import NodeContext, PodWorker

log = logging.getLogger("nodeagent")


class NodeAgent:
    """One Node: registration, heartbeat and the pods bound to it."""

    def __init__(
        self,
        api: Any,
        shape: NodeShape,
        agent: Agent,
        index: int,
        image_map: ImageMap,
        state_dir: Path,
        backoff_base: float,
        labels: Mapping[str, str],
        heartbeat_seconds: float = 10.0,
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.leases = client.CoordinationV1Api(api)
        self.network = agent.add_node(index)
        self.workers: dict[str, PodWorker] = {}
        # `kubectl logs`: the kubelet's log endpoint on the node's address.
        self.kubelet = KubeletServer(
            self.network.host_ip,
            worker_logs(lambda: list(self.workers.values())),
            state_dir / "kubelet",
        )
        self.shape = NodeShape(
            name=shape.name,
            address=self.network.host_ip,
            kubelet_port=self.kubelet.port,
            pod_cidr=str(self.network.subnet),
            cpu=shape.cpu,
            memory=shape.memory,
            pods=shape.pods,
            gpus=shape.gpus,
            gpu_resource=shape.gpu_resource,
        )
        self.labels = dict(labels)
        self.heartbeat_seconds = heartbeat_seconds
        self.ctx = NodeContext(
            node=shape.name,
            network=self.network,
            image_map=image_map,
            lookups=Lookups(api),
            core=self.core,
            pods_dir=state_dir / "pods",
            backoff_base=backoff_base,
            allocatable=self.shape.capacity(),
        )
        self.cache = PodCache(api, shape.name)
        self.finalized: dict[str, float] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready_since = datetime.now(UTC)

    @property
    def name(self) -> str:
        return self.shape.name

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.kubelet.start()
        self.register()
        self.cache.start()
        for target, what in ((self._heartbeat_loop, "heartbeat"), (self._sync_loop, "sync")):
            thread = threading.Thread(target=target, name=f"{what}-{self.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, grace: float) -> None:
        """Stop every pod (SIGTERM, ``grace``, SIGKILL), then remove the Node and its network."""
        self._stop.set()
        self.kubelet.close()
        self.cache.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        for worker in self.workers.values():
            worker.request_stop(min(grace, worker.termination_grace()))
        for worker in self.workers.values():
            worker.join(timeout=grace + 10)
        try:
            ignore_status((404,), self.core.delete_node, self.name)
            ignore_status((404,), self.leases.delete_namespaced_lease, self.name, "kube-node-lease")
        except Exception as error:  # the API may be gone already; local clean-up must go on
            log.warning("could not delete node %s: %s", self.name, error)
        finally:
            self.network.close()

    # -- node object and heartbeat -------------------------------------------------------------

    def register(self) -> None:
        body = node_manifest(self.shape, self.labels)
        existing = ignore_status((404,), self.core.read_node, self.name)
        if existing is None:
            raw(self.core.create_node, body)
        else:
            raw(self.core.patch_node, self.name, body, _content_type=MERGE_PATCH)
        self.heartbeat()

    def heartbeat(self) -> None:
        now = datetime.now(UTC)
        status = node_status(self.shape, now, self.ready_since)
        node = raw(
            self.core.patch_node_status, self.name, {"status": status}, _content_type=MERGE_PATCH
        )
        lease = lease_manifest(self.name, node["metadata"]["uid"], now)
        renewed = ignore_status(
            (404,),
            self.leases.patch_namespaced_lease,
            self.name,
            "kube-node-lease",
            {"spec": {"renewTime": micro_time(now), "holderIdentity": self.name}},
            _content_type=MERGE_PATCH,
        )
        if renewed is None:
            raw(self.leases.create_namespaced_lease, "kube-node-lease", lease)

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.heartbeat()
            except Exception as error:  # keep beating through a brief API outage
                log.warning("heartbeat of %s failed: %s", self.name, error)

    # -- pods ----------------------------------------------------------------------------------

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self.cache.changed.wait(1.0)
            self.cache.changed.clear()
            try:
                self.sync()
            except Exception:
                log.exception("sync of node %s failed", self.name)

    def sync(self) -> None:
        pods = self.cache.snapshot()
        bound = [
            BoundPod(
                uid=uid,
                terminating=pod["metadata"].get("deletionTimestamp") is not None,
                finished=pod.get("status", {}).get("phase") in ("Succeeded", "Failed"),
            )
            for uid, pod in pods.items()
        ]
        plan = plan_sync(bound, {uid: w.stopped.is_set() for uid, w in self.workers.items()})
        for uid in plan.start:
            worker = PodWorker(pods[uid], self.ctx)
            self.workers[uid] = worker
            log.info("starting pod %s", worker.name)
            worker.start()
        for uid, worker in self.workers.items():
            if uid in pods:
                worker.pod = pods[uid]
        for uid in plan.stop:
            self.workers[uid].request_stop()
        for uid in plan.finalize:
            self.finalize(pods[uid])
        for uid in plan.forget:
            worker = self.workers[uid]
            worker.request_stop()
            if worker.stopped.is_set():
                worker.remove_files()
                del self.workers[uid]
                self.finalized.pop(uid, None)

    def finalize(self, pod: dict[str, Any]) -> None:
        """Delete a terminating pod whose processes are gone, as the kubelet does (grace 0)."""
        uid = pod["metadata"]["uid"]
        if time.monotonic() - self.finalized.get(uid, -10.0) < 5.0:
            return
        self.finalized[uid] = time.monotonic()
        meta = pod["metadata"]
        ignore_status(
            (404, 409),
            self.core.delete_namespaced_pod,
            meta["name"],
            meta["namespace"],
            # In the body: the generated client drops a query parameter whose value is 0.
            body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
        )


class Provisioner:
    """Binds Pending PersistentVolumeClaims to hostPath PersistentVolumes under ``root``.

    Claims whose storage class exists and names another provisioner are left alone. A volume
    whose claim is gone (Released) is deleted together with its directory.
    """

    LABEL = "corral.dev/provisioned-by"

    def __init__(self, api: Any, root: Path, interval: float = 1.0) -> None:
        self.core = client.CoreV1Api(api)
        self.storage = client.StorageV1Api(api)
        self.root = root
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="provisioner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.once()
            except Exception as error:
                log.warning("provisioner pass failed: %s", error)

    def once(self) -> None:
        classes = {
            c["metadata"]["name"]: c.get("provisioner", "")
            for c in raw(self.storage.list_storage_class).get("items", [])
        }
        for pvc in raw(self.core.list_persistent_volume_claim_for_all_namespaces).get("items", []):
            spec = pvc.get("spec", {})
            if pvc.get("status", {}).get("phase") != "Pending" or spec.get("volumeName"):
                continue
            klass = spec.get("storageClassName") or ""
            if klass in classes and classes[klass] != "corral.dev/node-agent":
                continue
            self.provision(pvc)
        selector = f"{self.LABEL}=node-agent"
        for pv in raw(self.core.list_persistent_volume, label_selector=selector).get("items", []):
            if pv.get("status", {}).get("phase") in ("Released", "Failed"):
                ignore_status((404,), self.core.delete_persistent_volume, pv["metadata"]["name"])
                shutil.rmtree(pv["spec"]["hostPath"]["path"], ignore_errors=True)

    def provision(self, pvc: dict[str, Any]) -> None:
        meta, spec = pvc["metadata"], pvc["spec"]
        path = self.root / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        path.mkdir(parents=True, exist_ok=True)
        storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{meta['uid']}", "labels": {self.LABEL: "node-agent"}},
            "spec": {
                "capacity": {"storage": storage},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Delete",
                "storageClassName": spec.get("storageClassName") or "",
                "volumeMode": spec.get("volumeMode") or "Filesystem",
                "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                "claimRef": {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        if ignore_status((409,), self.core.create_persistent_volume, body) is not None:
            log.info("provisioned %s for claim %s/%s", path, meta["namespace"], meta["name"])
