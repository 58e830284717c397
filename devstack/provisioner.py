"""The local node's volume provisioner: binds PersistentVolumeClaims of the default StorageClass
(``standard``, made by ``devstack.node``) to hostPath PersistentVolumes in a directory of their
own under ``--root``, as kind's local-path provisioner does on a single-node cluster.

A claim of another StorageClass is left alone, as is one that names no class when there is no
default. A volume whose claim is gone (Released) is deleted together with its directory. The
directories are world-writable (mode 1777 is not needed: one claim, one directory), because a
hostPath volume does not take a pod's fsGroup and corral's pods run as a non-root user.

    python -m devstack.provisioner --kubeconfig K --root DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from devstack.node import DEFAULT_CLASS, PROVISIONER

log = logging.getLogger("devstack.provisioner")
LABEL = "devstack.corral.dev/provisioned-by"


def raw(call: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a generated API method and return the response body as a dict (no models)."""
    response = call(*args, _preload_content=False, **kwargs)
    data: dict[str, Any] = json.loads(response.data or b"{}")
    return data


def claim_class(pvc: dict[str, Any], classes: list[dict[str, Any]]) -> str | None:
    """The StorageClass a claim gets: its own, or the default one when it names none (None when
    there is no default: such a claim waits for a matching volume, as on a cluster)."""
    named = (pvc.get("spec") or {}).get("storageClassName")
    if named is not None:
        return str(named)
    for klass in classes:
        if (klass["metadata"].get("annotations") or {}).get(DEFAULT_CLASS) == "true":
            return str(klass["metadata"]["name"])
    return None


def ours(pvc: dict[str, Any], classes: list[dict[str, Any]]) -> bool:
    """Whether this provisioner should bind ``pvc``: Pending, unbound, of a class it provisions."""
    spec = pvc.get("spec") or {}
    if (pvc.get("status") or {}).get("phase") != "Pending" or spec.get("volumeName"):
        return False
    name = claim_class(pvc, classes)
    return any(
        k["metadata"]["name"] == name and k.get("provisioner") == PROVISIONER for k in classes
    )


def volume_for(pvc: dict[str, Any], path: Path, storage_class: str) -> dict[str, Any]:
    meta, spec = pvc["metadata"], pvc["spec"]
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": f"pvc-{meta['uid']}",
            "labels": {LABEL: "hostpath"},
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": storage_class,
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": str(path), "type": "Directory"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


class Provisioner:
    def __init__(self, api: Any, root: Path, interval: float = 1.0) -> None:
        self.core = client.CoreV1Api(api)
        self.storage = client.StorageV1Api(api)
        self.root = root
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.once()
            except Exception as error:  # the next pass tries again
                log.warning("provisioner pass failed: %s", error)

    def once(self) -> None:
        classes = raw(self.storage.list_storage_class).get("items", [])
        for pvc in raw(self.core.list_persistent_volume_claim_for_all_namespaces).get("items", []):
            if ours(pvc, classes):
                self.provision(pvc, str(claim_class(pvc, classes)))
        selector = f"{LABEL}=hostpath"
        for pv in raw(self.core.list_persistent_volume, label_selector=selector).get("items", []):
            if (pv.get("status") or {}).get("phase") in ("Released", "Failed"):
                path = Path(pv["spec"]["hostPath"]["path"])
                try:
                    self.core.delete_persistent_volume(pv["metadata"]["name"])
                except ApiException as error:
                    if error.status != 404:
                        raise
                if path.parent == self.root:
                    shutil.rmtree(path, ignore_errors=True)
                log.info("deleted %s and %s", pv["metadata"]["name"], path)

    def provision(self, pvc: dict[str, Any], storage_class: str) -> None:
        meta = pvc["metadata"]
        path = self.root / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        try:
            self.core.create_persistent_volume(cast(Any, volume_for(pvc, path, storage_class)))
        except ApiException as error:
            if error.status != 409:
                raise
            return
        log.info("provisioned %s for claim %s/%s", path, meta["namespace"], meta["name"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.provisioner")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.root = args.root.resolve()
    args.root.mkdir(parents=True, exist_ok=True)
    loader: Any = config  # partly typed
    provisioner = Provisioner(loader.new_client_from_config(str(args.kubeconfig)), args.root)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: provisioner.stopped.set())
    provisioner.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
