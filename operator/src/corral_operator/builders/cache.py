"""The blob-cache PVC of a cache profile."""

from __future__ import annotations

from typing import Any

from corral_operator import api
from corral_operator.builders.common import base_labels
from corral_operator.settings import CacheProfile


def build_cache_pvc(namespace: str, profile_name: str, profile: CacheProfile) -> dict[str, Any]:
    """One claim per profile per namespace, shared by every Model of that profile.

    It has no owner: it outlives any single Model, and deleting it would drop every blob.
    """
    spec: dict[str, Any] = {
        "accessModes": [profile.access_mode],
        "resources": {"requests": {"storage": profile.size}},
        "volumeMode": "Filesystem",
    }
    if profile.storage_class_name is not None:
        spec["storageClassName"] = profile.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": api.cache_pvc_name(profile_name),
            "namespace": namespace,
            "labels": {**base_labels("cache"), api.LABEL_CACHE: profile_name},
        },
        "spec": spec,
    }
