"""The Jobs a Model runs on its cache PVC: the pull Job and, on delete, the collect Job."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from corral_operator import api, pull
from corral_operator.builders.common import (
    base_labels,
    cache_volume,
    container_security_context,
    owner_reference,
    pod_security_context,
    tmp_volume,
)
from corral_operator.settings import OperatorSettings
from corral_operator.sources import parse_source


def ollama_parameters(parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Model parameters under the names Ollama's params layer uses."""
    return {
        api.PARAMETER_NAMES[key]: value
        for key, value in (parameters or {}).items()
        if key in api.PARAMETER_NAMES
    }


# Where a pull Job mounts the claim of a ``pvc://claim/path`` source (read-only).
SOURCE_CLAIM_ROOT = "/mnt/pvc"


def _job_pod_spec(
    container: dict[str, Any], claim: str, extra_volumes: tuple[dict[str, Any], ...] = ()
) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [container],
        "volumes": [cache_volume(claim, read_only=False), tmp_volume(), *extra_volumes],
    }


def _pvc_source(source: str) -> tuple[str, str] | None:
    """``pvc://claim/dir/file.gguf`` -> ("claim", "dir/file.gguf"); None for other schemes."""
    parsed = parse_source(source)
    if parsed.scheme != "pvc":
        return None
    claim, _, path = parsed.location.partition("/")
    return claim, path


def _container(
    name: str, args: list[str], env: list[dict[str, Any]], settings: OperatorSettings
) -> dict[str, Any]:
    return {
        "name": name,
        "image": settings.runtime_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["corral"],
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}, *env],
        "securityContext": container_security_context(),
        "terminationMessagePath": pull.TERMINATION_LOG,
        "terminationMessagePolicy": "File",
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "volumeMounts": [
            {"name": "models", "mountPath": api.MODELS_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def build_pull_job(
    model: Mapping[str, Any], served_name: str, claim: str, settings: OperatorSettings
) -> dict[str, Any]:
    """The Job that pulls ``spec.source`` into the cache PVC (see :mod:`corral_operator.pull`)."""
    meta, spec = model["metadata"], model["spec"]
    spec_hash = pull.pull_spec_hash(spec)
    env: list[dict[str, Any]] = [
        {"name": pull.RESULT_FILE_ENV, "value": pull.TERMINATION_LOG},
        {"name": "CORRAL_PULL_NAME", "value": served_name},
    ]
    if spec.get("digest"):
        env.append({"name": "CORRAL_PULL_DIGEST", "value": spec["digest"]})
    if spec.get("template") is not None:
        env.append({"name": "CORRAL_PULL_TEMPLATE", "value": spec["template"]})
    if spec.get("system") is not None:
        env.append({"name": "CORRAL_PULL_SYSTEM", "value": spec["system"]})
    if spec.get("parameters"):
        params = json.dumps(ollama_parameters(spec["parameters"]), sort_keys=True)
        env.append({"name": "CORRAL_PULL_PARAMETERS", "value": params})
    if spec.get("messages"):
        env.append({"name": "CORRAL_PULL_MESSAGES", "value": json.dumps(spec["messages"])})
    if spec.get("license") is not None:
        env.append({"name": "CORRAL_PULL_LICENSE", "value": spec["license"]})
    labels = {**base_labels("pull"), api.LABEL_MODEL: meta["name"]}
    source: str = spec["source"]
    extra_volumes: tuple[dict[str, Any], ...] = ()
    pvc_source = _pvc_source(source)
    if pvc_source is not None:
        # The source claim must be mounted for the puller to read it. The Job names the file by
        # its path under the mount, so the puller needs no convention of where claims appear.
        source_claim, file_path = pvc_source
        mount_path = f"{SOURCE_CLAIM_ROOT}/{source_claim}"
        source = f"{mount_path}/{file_path}"
        extra_volumes = (
            {
                "name": "source",
                "persistentVolumeClaim": {"claimName": source_claim, "readOnly": True},
            },
        )
    container = _container(
        pull.PULL_CONTAINER, ["pull", source, "--models", api.MODELS_MOUNT], env, settings
    )
    if pvc_source is not None:
        container["volumeMounts"].append(
            {"name": "source", "mountPath": mount_path, "readOnly": True}
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": api.pull_job_name(f"{meta['name']}-{spec_hash}"),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {api.ANNOTATION_PULL_SPEC: spec_hash},
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "backoffLimit": settings.pull_backoff_limit,
            "activeDeadlineSeconds": settings.pull_deadline_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": _job_pod_spec(container, claim, extra_volumes),
            },
        },
    }


def build_gc_job(
    model: Mapping[str, Any], served_name: str, claim: str, settings: OperatorSettings
) -> dict[str, Any]:
    """The Job that removes a deleted Model from the cache.

    ``corral rm`` deletes the manifest and then every blob no remaining manifest references,
    so blobs shared with other models stay.
    """
    meta = model["metadata"]
    labels = {**base_labels("gc"), api.LABEL_MODEL: meta["name"]}
    container = _container(
        pull.GC_CONTAINER, ["rm", served_name, "--models", api.MODELS_MOUNT], [], settings
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": api.gc_job_name(meta["name"]),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [owner_reference(model)],
        },
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": settings.gc_deadline_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": _job_pod_spec(container, claim),
            },
        },
    }
