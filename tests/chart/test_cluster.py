"""The chart on the real control plane: a server-side dry-run apply of the render (default and
non-default values), and a real ``helm install`` whose objects and permissions are then checked.

Pods do not start here (there is no image to run); what is checked is what the API server
accepts and stores, and what the ServiceAccounts may do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.chart import CHART, CUSTOM_VALUES, helm, render, render_text

pytestmark = pytest.mark.chart

CRDS = ("models.corral.dev", "modelservers.corral.dev")


def _dry_run(kubectl: Any, text: str) -> None:
    result = kubectl(
        "apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-", input=text
    )
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


def test_dry_run_apply_default(kubectl: Any, namespace: str) -> None:
    _dry_run(kubectl, render_text(namespace=namespace))


def test_dry_run_apply_custom(kubectl: Any, namespace: str) -> None:
    # The ServiceMonitors need the Prometheus Operator's CRDs, which this cluster lacks; every
    # other object of the non-default render goes to the API server.
    objects = render(
        "-f", str(CUSTOM_VALUES), "--set", f"watchNamespaces={{{namespace}}}", namespace=namespace
    )
    kinds = {obj["kind"] for obj in objects}
    assert {"NetworkPolicy", "Role", "RoleBinding", "ServiceMonitor"} <= kinds
    applied = [obj for obj in objects if obj["kind"] != "ServiceMonitor"]
    _dry_run(kubectl, yaml.safe_dump_all(applied))


def _helm(kubeconfig: Path, *args: str) -> None:
    result = helm(f"--kubeconfig={kubeconfig}", *args, check=False, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _can(kubectl: Any, account: str, namespace: str, verb: str, resource: str) -> bool:
    """``resource`` is "plural.group[/name]" or "plural.group#subresource"."""
    resource, _, subresource = resource.partition("#")
    extra = [f"--subresource={subresource}"] if subresource else []
    result = kubectl("auth", "can-i", f"--as={account}", "-n", namespace, verb, resource, *extra)
    answer = str(result.stdout).strip()
    assert answer in {"yes", "no"}, result.stderr
    return answer == "yes"


@pytest.fixture
def release(kubeconfig: Path, namespace: str) -> Any:
    name = f"c{namespace[-8:]}"
    # CRDs may already exist (other tests apply crds/, or an earlier release kept them).
    _helm(
        kubeconfig,
        "install", name, str(CHART), "-n", namespace,
        "--take-ownership", "--force-conflicts",
        "--set", "gateway.auth.existingSecret=api-keys",
    )  # fmt: skip
    yield name
    helm(f"--kubeconfig={kubeconfig}", "uninstall", name, "-n", namespace, check=False)


def test_helm_install_creates_the_objects(
    kubectl: Any, kubeconfig: Path, namespace: str, release: str
) -> None:
    rendered = render(
        "--set", "gateway.auth.existingSecret=api-keys", release=release, namespace=namespace
    )
    for obj in rendered:
        meta = obj["metadata"]
        args = ["get", obj["kind"], meta["name"], "-o", "yaml"]
        if "namespace" in meta:
            args += ["-n", meta["namespace"]]
        result = kubectl(*args)
        assert result.returncode == 0, f"{obj['kind']} {meta['name']}: {result.stderr}"
        stored = yaml.safe_load(result.stdout)
        for key, value in (meta.get("labels") or {}).items():
            assert stored["metadata"]["labels"][key] == value
    operator = yaml.safe_load(
        kubectl("get", "deployment", f"{release}-corral-operator", "-n", namespace, "-o", "yaml",
                check=True).stdout
    )  # fmt: skip
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"]["type"] == "Recreate"
    for crd in CRDS:
        result = kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
        assert result.returncode == 0, result.stderr


def test_installed_accounts_have_exactly_their_permissions(
    kubectl: Any, namespace: str, release: str
) -> None:
    sa = f"system:serviceaccount:{namespace}"
    operator, gateway = f"{sa}:{release}-corral-operator", f"{sa}:{release}-corral-gateway"
    other = "default"  # cluster-wide install: any namespace
    allowed = [
        (operator, "patch", "models.corral.dev"),
        (operator, "patch", "modelservers.corral.dev#status"),
        (operator, "create", "deployments.apps"),
        (operator, "delete", "jobs.batch"),
        (operator, "create", "persistentvolumeclaims"),
        (operator, "create", "events"),
        (operator, "list", "customresourcedefinitions.apiextensions.k8s.io"),
        (gateway, "watch", "modelservers.corral.dev"),
        (gateway, "patch", "modelservers.corral.dev#scale"),
        (gateway, "patch", "modelservers.corral.dev#status"),
        (gateway, "list", "endpoints"),
    ]
    denied = [
        (operator, "get", "secrets"),
        (operator, "delete", "deployments.apps"),
        (operator, "create", "pods"),
        (operator, "delete", "customresourcedefinitions.apiextensions.k8s.io"),
        (gateway, "list", "secrets"),
        (gateway, "patch", "models.corral.dev"),
        (gateway, "create", "deployments.apps"),
        (gateway, "create", "pods#exec"),
        (gateway, "list", "pods"),
        (gateway, "patch", "models.corral.dev#status"),
        (operator, "update", "modelservers.corral.dev#scale"),
    ]
    for account, verb, resource in allowed:
        assert _can(kubectl, account, other, verb, resource), (account, verb, resource)
    for account, verb, resource in denied:
        assert not _can(kubectl, account, other, verb, resource), (account, verb, resource)
    # The API-key Secret: readable by the gateway by name, in the release namespace only.
    assert _can(kubectl, gateway, namespace, "get", "secrets/api-keys")
    assert not _can(kubectl, gateway, namespace, "get", "secrets/other")
    assert not _can(kubectl, operator, namespace, "get", "secrets/api-keys")


def test_operator_account_can_apply_what_the_operator_builds(
    kubectl: Any, namespace: str, release: str
) -> None:
    from corral_operator.builders.cache import build_cache_pvc
    from corral_operator.settings import CacheProfile

    account = f"system:serviceaccount:{namespace}:{release}-corral-operator"
    pvc = build_cache_pvc(namespace, "default", CacheProfile())
    result = kubectl(
        "apply", "--server-side", "--field-manager=corral-operator", f"--as={account}",
        "-f", "-", input=yaml.safe_dump(pvc),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_uninstall_keeps_the_crds(
    kubectl: Any, kubeconfig: Path, namespace: str, release: str
) -> None:
    _helm(kubeconfig, "uninstall", release, "-n", namespace)
    for crd in CRDS:
        assert kubectl("get", "crd", crd).returncode == 0
    gone = kubectl("get", "clusterrole", f"{release}-corral-operator")
    assert gone.returncode != 0 and "NotFound" in gone.stderr
