"""Pieces every child object shares: labels, owner references, Pod Security "restricted"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from corral_operator import api

# A fixed non-root identity: the runtime image need not declare a user, and fsGroup makes the
# cache PVC writable for pull Jobs.
RUN_AS_USER = 65532


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """A controller owner reference, so deleting the owner deletes the child."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", api.API_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def base_labels(component: str) -> dict[str, str]:
    return {
        api.LABEL_PART_OF: "corral",
        api.LABEL_MANAGED_BY: api.MANAGED_BY,
        api.LABEL_COMPONENT: component,
    }


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tmp_volume() -> dict[str, Any]:
    """A writable /tmp, since the root filesystem is read-only."""
    return {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}


def cache_volume(claim: str, read_only: bool) -> dict[str, Any]:
    return {
        "name": "models",
        "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only},
    }
