"""Helpers for the operator's cluster tests: the operator as a subprocess, a stand-in for the
kubelet (most tests write their pods' statuses themselves; the real node, when the session runs
one, is tainted for them), an image derived from a built one for pods that really run, and
polling."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client

from devstack import poll

T = TypeVar("T")
CRDS = Path(__file__).resolve().parents[3] / "crds"
GEMMA_RESULT = {
    "name": "gemma3:270m",
    "digest": "sha256:" + "ab" * 32,
    "sizeBytes": 253113024,
    "format": "gguf",
    "family": "gemma3",
    "parameterSize": "268.10M",
    "quantization": "Q4_K_M",
    "contextLength": 32768,
}


def wait_for(check: Callable[[], T | None], timeout: float = 20.0, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy."""
    return poll.wait_for(what or repr(check), check, timeout)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    """Typed shortcuts over the API for the tests."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.api, self.ns = api, namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    # -- corral objects ---------------------------------------------------------------------

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "corral.dev/v1alpha1", **body}
        body["metadata"] = {"namespace": self.ns, **body["metadata"]}
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            "corral.dev", "v1alpha1", self.ns, plural, body
        )
        return result

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = self.custom.get_namespaced_custom_object(
                "corral.dev", "v1alpha1", self.ns, plural, name
            )
            return result
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            "corral.dev", "v1alpha1", self.ns, plural, name, body
        )

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object("corral.dev", "v1alpha1", self.ns, plural, name)

    def condition(self, plural: str, name: str, type_: str) -> dict[str, Any] | None:
        obj = self.get(plural, name) or {}
        for cond in (obj.get("status") or {}).get("conditions") or ():
            if cond["type"] == type_:
                return dict(cond)
        return None

    def wait_condition(
        self,
        plural: str,
        name: str,
        type_: str,
        status: str,
        reason: str | None = None,
        timeout: float = 20,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            cond = self.condition(plural, name, type_)
            if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
                return cond
            return None

        return wait_for(check, timeout, f"{plural}/{name} {type_}={status} ({reason})")

    # -- playing the kubelet ----------------------------------------------------------------

    def job_pods(self, selector: str) -> list[client.V1Pod]:
        return list(self.core.list_namespaced_pod(self.ns, label_selector=selector).items)

    def finish_pod(self, pod: client.V1Pod, *, exit_code: int, message: str) -> None:
        """Report a Job's pod as finished with a termination message, as a kubelet would."""
        container = pod.spec.containers[0]
        stamp = now()
        self.core.patch_namespaced_pod_status(
            pod.metadata.name,
            self.ns,
            {
                "status": {
                    "phase": "Succeeded" if exit_code == 0 else "Failed",
                    "containerStatuses": [
                        {
                            "name": container.name,
                            "image": container.image,
                            "imageID": "",
                            "ready": False,
                            "restartCount": 0,
                            "state": {
                                "terminated": {
                                    "exitCode": exit_code,
                                    "reason": "Completed" if exit_code == 0 else "Error",
                                    "message": message,
                                    "startedAt": stamp,
                                    "finishedAt": stamp,
                                }
                            },
                        }
                    ],
                }
            },
        )

    def play_pull(
        self, model: str, result: Mapping[str, Any] | None = None, exit_code: int = 0
    ) -> str:
        """Finish the current pull Job's pod of ``model``; returns the Job's name."""
        job = wait_for(
            lambda: (self.get("models", model) or {}).get("status", {}).get("pullJob"),
            20,
            f"the pull Job of {model}",
        )
        pod = wait_for(lambda: self.job_pods(f"job-name={job}"), 20, f"a pod of Job {job}")[0]
        self.finish_pod(pod, exit_code=exit_code, message=json.dumps(dict(result or GEMMA_RESULT)))
        return str(job)

    def finish_gc_pods(self) -> int:
        """Finish every pending collect Job pod successfully; returns how many."""
        pods = [
            p
            for p in self.job_pods("app.kubernetes.io/component=gc")
            if p.status.phase not in ("Succeeded", "Failed")
        ]
        for pod in pods:
            self.finish_pod(pod, exit_code=0, message="")
        return len(pods)

    def ready_model(
        self, name: str, source: str = "gemma3:270m", result: Mapping[str, Any] | None = None
    ) -> None:
        self.create(
            "models", {"kind": "Model", "metadata": {"name": name}, "spec": {"source": source}}
        )
        self.play_pull(name, result)
        self.wait_condition("models", name, "Ready", "True")

    # -- nodes and volumes (cluster-scoped: the tests remove what they create) --------------

    def add_node(
        self,
        name: str,
        *,
        gpus: int = 0,
        labels: Mapping[str, str] | None = None,
        taints: list[dict[str, str]] | None = None,
    ) -> None:
        self.core.create_node(
            {
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                },
                "spec": {"taints": taints or []},
            }
        )
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        stamp = now()
        self.core.patch_node_status(
            name,
            {
                "status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "test node",
                            "lastHeartbeatTime": stamp,
                            "lastTransitionTime": stamp,
                        }
                    ],
                }
            },
        )

    def bind_cache_volume(self, pv_name: str, claim: str = "corral-cache-default") -> None:
        """A PersistentVolume for the cache claim (there is no provisioner on this cluster)."""
        self.core.create_persistent_volume(
            {
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": {"storage": "50Gi"},
                    "accessModes": ["ReadWriteMany"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": f"/tmp/{pv_name}"},
                    "claimRef": {"namespace": self.ns, "name": claim},
                },
            }
        )


# The taint that keeps the session's real node from running the pods of a test that plays the
# kubelet (tests/cluster/conftest.py).
PLAYED_TAINT = {"key": "corral.dev/kubelet-played", "value": "true", "effect": "NoSchedule"}


def _taint_dict(taint: Any) -> dict[str, Any]:
    if isinstance(taint, Mapping):
        return dict(taint)
    return dict(client.ApiClient().sanitize_for_serialization(taint))


def with_taint(taints: list[Any] | None, taint: Mapping[str, str]) -> list[dict[str, Any]]:
    """A node's taints plus ``taint`` (replacing one with its key and effect)."""
    return [*without_taint(taints, taint), dict(taint)]


def without_taint(taints: list[Any] | None, taint: Mapping[str, str]) -> list[dict[str, Any]]:
    """A node's taints less any with ``taint``'s key and effect."""
    kept = [_taint_dict(t) for t in taints or ()]
    return [t for t in kept if (t.get("key"), t.get("effect")) != (taint["key"], taint["effect"])]


# -- pods that really run -------------------------------------------------------------------


def layered_archive(base: Path, out: Path, name: str, files: Mapping[str, bytes]) -> Path:
    """An OCI archive of the image in the OCI archive ``base`` with one more layer holding
    ``files`` (path in the image -> content, executable), named ``name`` for containerd's import:
    an image derived from another the way a Dockerfile's ``COPY`` derives one."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
    diff = layer.getvalue()
    compressed = gzip.compress(diff, mtime=0)
    with tarfile.open(base) as source:

        def blob(digest: str) -> bytes:
            return blob_of(source, f"blobs/sha256/{digest.removeprefix('sha256:')}")

        (entry,) = json.loads(blob_of(source, "index.json"))["manifests"]
        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        config["rootfs"]["diff_ids"].append(_digest(diff))
        config.setdefault("history", []).append({"created_by": f"layered_archive: {sorted(files)}"})
        config_bytes = json.dumps(config).encode()
        manifest["config"] = _descriptor(manifest["config"]["mediaType"], config_bytes)
        manifest["layers"].append(
            _descriptor("application/vnd.oci.image.layer.v1.tar+gzip", compressed)
        )
        manifest_bytes = json.dumps(manifest).encode()
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    **_descriptor(entry["mediaType"], manifest_bytes),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name,
                    },
                }
            ],
        }
        new = {"index.json": json.dumps(index).encode()}
        for data in (config_bytes, manifest_bytes, compressed):
            new[f"blobs/sha256/{_digest(data).removeprefix('sha256:')}"] = data
        with tarfile.open(out, mode="w") as tar:
            for member in source.getmembers():
                if member.name in new or not member.isfile():
                    continue
                tar.addfile(member, source.extractfile(member))
            for path, data in new.items():
                info = tarfile.TarInfo(path)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out


def blob_of(archive: tarfile.TarFile, path: str) -> bytes:
    member = archive.extractfile(path)
    assert member is not None, path
    return member.read()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}
