"""The CRDs on the real API server: schema rejections, defaults, short names, printer columns,
and what ``kubectl explain`` says of their fields."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.cluster.operator.support import Cluster, wait_for

pytestmark = pytest.mark.cluster


def _apply(kubectl: Any, namespace: str, obj: dict[str, Any]) -> Any:
    obj = {"apiVersion": "corral.dev/v1alpha1", **obj}
    obj["metadata"] = {"namespace": namespace, **obj["metadata"]}
    # --validate=false: the API server, not kubectl, must be the one that rejects.
    return kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(obj))


@pytest.mark.parametrize(
    ("kind", "name", "spec", "field"),
    [
        ("Model", "m", {"source": "ftp://example.com/x.gguf"}, "spec.source"),
        ("Model", "m", {"source": "hf://org/repo/notgguf.bin"}, "spec.source"),
        ("Model", "m", {"source": "gemma3:270m", "digest": "md5:abc"}, "spec.digest"),
        ("Model", "m", {"source": "gemma3:270m", "cache": "Bad_Name"}, "spec.cache"),
        ("Model", "m", {"source": "x", "parameters": {"topP": 2}}, "spec.parameters.topP"),
        ("Model", "m", {}, "spec.source"),
        ("ModelServer", "s", {"models": []}, "spec.models"),
        ("ModelServer", "s", {"models": ["Not_A_Name"]}, "spec.models"),
        ("ModelServer", "s", {"models": ["m"], "minReplicas": -1}, "spec.minReplicas"),
        ("ModelServer", "s", {"models": ["m"], "maxReplicas": 0}, "spec.maxReplicas"),
        ("ModelServer", "s", {"models": ["m"], "keepAliveSeconds": -1}, "spec.keepAliveSeconds"),
        (
            "ModelServer",
            "s",
            {"models": ["m"], "resources": {"memory": "lots"}},
            "spec.resources.memory",
        ),
        (
            "ModelServer",
            "s",
            {"models": ["m"], "resources": {"cpu": "2 cores"}},
            "spec.resources.cpu",
        ),
        ("ModelServer", "s", {"models": ["m"], "resources": {"gpus": -1}}, "spec.resources.gpus"),
        (
            "ModelServer",
            "s",
            {"models": ["m"], "runtime": {"gpuLayers": "many"}},
            "spec.runtime.gpuLayers",
        ),
        (
            "ModelServer",
            "s",
            {"models": ["m"], "runtime": {"kvCacheType": "q2"}},
            "spec.runtime.kvCacheType",
        ),
        ("ModelServer", "9s", {"models": ["m"]}, "metadata.name"),
    ],
)
def test_invalid_objects_are_rejected_naming_the_field(
    kubectl: Any,
    namespace: str,
    crds: None,
    kind: str,
    name: str,
    spec: dict[str, Any],
    field: str,
) -> None:
    result = _apply(kubectl, namespace, {"kind": kind, "metadata": {"name": name}, "spec": spec})
    assert result.returncode != 0
    assert "is invalid" in result.stderr
    assert field in result.stderr


@pytest.mark.parametrize(
    "source",
    [
        "gemma3:270m",
        "llama3.2",
        "ollama://registry.ollama.ai/library/qwen3:0.6b",
        "hf://org/repo/sub/model-Q4_K_M.gguf@main",
        "https://example.com/m.gguf",
        "pvc://weights/models/m.gguf",
    ],
)
def test_every_source_scheme_is_accepted(
    kubectl: Any, namespace: str, crds: None, source: str
) -> None:
    result = _apply(
        kubectl, namespace, {"kind": "Model", "metadata": {"name": "m"}, "spec": {"source": source}}
    )
    assert result.returncode == 0, result.stderr


def test_defaults_are_filled_in(cluster: Cluster) -> None:
    cluster.create(
        "models", {"kind": "Model", "metadata": {"name": "m"}, "spec": {"source": "gemma3:270m"}}
    )
    cluster.create(
        "modelservers",
        {"kind": "ModelServer", "metadata": {"name": "s"}, "spec": {"models": ["m"]}},
    )
    model, server = cluster.get("models", "m"), cluster.get("modelservers", "s")
    assert model is not None and server is not None
    assert model["spec"]["cache"] == "default"
    spec = server["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"], spec["keepAliveSeconds"]) == (0, 1, 300)
    # No GPU count: left unset, the operator sizes it from the models (planners/sizing.py).
    assert spec["resources"] == {"gpuResourceName": "nvidia.com/gpu"}
    assert spec["runtime"] == {}


def test_short_names_and_printer_columns(kubectl: Any, cluster: Cluster) -> None:
    cluster.create(
        "models", {"kind": "Model", "metadata": {"name": "m"}, "spec": {"source": "gemma3:270m"}}
    )
    cluster.create(
        "modelservers",
        {"kind": "ModelServer", "metadata": {"name": "s"}, "spec": {"models": ["m"]}},
    )
    ns = cluster.ns
    models = kubectl("get", "mdl", "-n", ns, check=True).stdout.splitlines()
    assert models[0].split() == ["NAME", "READY", "SOURCE", "AGE"]
    assert models[1].split()[:2] == ["m", "gemma3:270m"]  # Ready is empty before reconcile
    wide = kubectl("get", "models", "-n", ns, "-o", "wide", check=True).stdout.splitlines()
    assert wide[0].split() == [
        "NAME",
        "READY",
        "REASON",
        "SOURCE",
        "PARAMS",
        "QUANT",
        "SIZE",
        "PROGRESS",
        "AGE",
    ]
    # The size columns show the status' readable strings, not the raw bytes beside them.
    cluster.custom.patch_namespaced_custom_object_status(
        "corral.dev",
        "v1alpha1",
        ns,
        "models",
        "m",
        {
            "status": {
                "sizeBytes": 291_000_000,
                "size": "291 MB",
                "completedBytes": 12_000_000,
                "totalBytes": 291_000_000,
                "progress": "12 MB / 291 MB (4%)",
            }
        },
    )
    row = kubectl("get", "models", "m", "-n", ns, "-o", "wide", check=True).stdout
    assert "291 MB" in row and "12 MB / 291 MB (4%)" in row
    assert "291000000" not in row
    servers = kubectl("get", "msrv", "-n", ns, check=True).stdout.splitlines()
    assert servers[0].split() == ["NAME", "READY", "MODELS", "REPLICAS", "AVAILABLE", "AGE"]
    assert '["m"]' in servers[1]
    wide = kubectl("get", "ms", "-n", ns, "-o", "wide", check=True).stdout.splitlines()
    assert wide[0].split() == [
        "NAME",
        "READY",
        "REASON",
        "MODELS",
        "REPLICAS",
        "AVAILABLE",
        "ENDPOINT",
        "AGE",
    ]
    both = kubectl("get", "corral", "-n", ns, check=True).stdout
    assert "model.corral.dev/m" in both and "modelserver.corral.dev/s" in both


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("model.spec.parameters", "a request's options override them"),
        ("model.spec.parameters.temperature", "Defaults to 0.8"),
        ("modelserver.spec.keepAliveSeconds", "in seconds"),
        ("modelserver.spec.keepAliveSeconds", "Defaults to 300"),
        ("model.status.progress", "12 MB / 291 MB (4%)"),
        ("modelserver.status.lastRequestTime", "keep-alive counts from it"),
    ],
)
def test_kubectl_explain_describes_the_fields(
    kubectl: Any, crds: None, path: str, text: str
) -> None:
    def explained() -> str | None:
        result = kubectl("explain", path, "--api-version=corral.dev/v1alpha1")
        # kubectl wraps the text; the published schema may trail a CRD just applied.
        said = " ".join(result.stdout.split())
        return said if result.returncode == 0 and text in said else None

    wait_for(explained, timeout=30, what=f"kubectl explain {path} saying {text!r}")
