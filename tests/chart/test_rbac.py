"""The chart's RBAC, rule by rule, against an allowlist; and the checks no rule may fail.

Any new permission must be added to ALLOWED below, in the same change, with the code that
needs it: the operator's from corral_operator.kube and kopf, the gateway's from its backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from corral_operator import kube
from tests.chart.chart import CUSTOM_VALUES, of_kind, render

pytestmark = pytest.mark.chart

# (component, apiGroup, resource, verb, resourceName or "")
Grant = tuple[str, str, str, str, str]


def _grants(component: str, group: str, resources: str, verbs: str) -> set[Grant]:
    return {
        (component, group, resource, verb, "")
        for resource in resources.split()
        for verb in verbs.split()
    }


NAMESPACED: set[Grant] = (
    _grants("operator", "corral.dev", "models modelservers", "get list watch patch")
    | _grants("operator", "corral.dev", "models/status modelservers/status", "patch")
    | _grants("operator", "corral.dev", "modelservers/scale", "patch")
    | _grants("operator", "apps", "deployments", "get list watch create patch")
    | _grants("operator", "", "services", "list watch create patch")
    | _grants("operator", "networking.k8s.io", "networkpolicies", "create patch")
    | _grants("operator", "batch", "jobs", "get list watch create patch delete")
    | _grants("operator", "", "persistentvolumeclaims", "create patch")
    | _grants("operator", "", "pods", "list")
    | _grants("operator", "", "pods/log", "get")
    | _grants("operator", "", "events", "create")
    | _grants("gateway", "corral.dev", "models", "list watch")
    | _grants("gateway", "corral.dev", "modelservers", "get list watch patch")
    | _grants("gateway", "corral.dev", "modelservers/status", "patch")
    | _grants("gateway", "corral.dev", "modelservers/scale", "get patch")
    | _grants("gateway", "", "endpoints", "list watch")
)
# Nodes are only read: listed (Kube.list_nodes) to size GPU servers by which have GPUs and how
# large, and watched (main.on_node) to re-size them when a node joins, leaves or is relabelled.
CLUSTER_ONLY: set[Grant] = _grants(
    "operator", "apiextensions.k8s.io", "customresourcedefinitions", "list watch"
) | _grants("operator", "", "nodes", "list watch")
API_KEY: set[Grant] = {("gateway", "", "secrets", "get", "corral-api-keys")}


def _flatten(roles: Iterable[Mapping[str, Any]]) -> set[Grant]:
    grants = set()
    for role in roles:
        component = role["metadata"]["labels"]["app.kubernetes.io/component"]
        for rule in role["rules"]:
            assert "nonResourceURLs" not in rule
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [""]:
                            grants.add((component, group, resource, verb, name))
    return grants


def _by_scope(objects: list[dict[str, Any]]) -> dict[str, set[Grant]]:
    """Grants per scope: "" for ClusterRoles, else the Role's namespace."""
    scopes: dict[str, set[Grant]] = {}
    for role in of_kind(objects, "ClusterRole", "Role"):
        scope = role["metadata"].get("namespace", "")
        scopes.setdefault(scope, set()).update(_flatten([role]))
    return scopes


def test_cluster_wide_rules_match_the_allowlist() -> None:
    assert _by_scope(render()) == {"": NAMESPACED | CLUSTER_ONLY}


def test_namespaced_rules_match_the_allowlist() -> None:
    # Watched namespaces get Roles; only the CRD watch stays cluster-wide. The release namespace
    # holds the one Secret the gateway may read.
    assert _by_scope(render("-f", str(CUSTOM_VALUES))) == {
        "": CLUSTER_ONLY,
        "team-a": NAMESPACED,
        "team-b": NAMESPACED,
        "corral-system": API_KEY,
    }


@pytest.mark.parametrize("args", [(), ("-f", str(CUSTOM_VALUES))], ids=["default", "custom"])
def test_no_rule_is_broad(args: tuple[str, ...]) -> None:
    grants = _flatten(of_kind(render(*args), "ClusterRole", "Role"))
    for component, group, resource, verb, name in grants:
        assert "*" not in (group, resource, verb), (component, group, resource, verb)
        assert verb not in {"escalate", "bind", "impersonate", "deletecollection"}
        assert resource not in {"pods/exec", "pods/attach", "nodes/proxy", "serviceaccounts/token"}
        if resource == "nodes":
            # Only the operator, only read (to size GPU servers): never changed, never proxied.
            assert component == "operator" and verb in {"list", "watch"}, (component, verb)
        if resource == "secrets":
            # Only the gateway, only by name, only read.
            assert (component, verb) == ("gateway", "get") and name, (component, verb, name)


@pytest.mark.parametrize("args", [(), ("-f", str(CUSTOM_VALUES))], ids=["default", "custom"])
def test_bindings_point_at_the_chart_roles_and_accounts(args: tuple[str, ...]) -> None:
    objects = render(*args)
    roles = {
        (r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"])
        for r in objects
        if r["kind"] in {"Role", "ClusterRole"}
    }
    accounts = {
        "operator": "corral-controller" if args else "corral-operator",
        "gateway": "llm-gateway" if args else "corral-gateway",
    }
    bindings = of_kind(objects, "RoleBinding", "ClusterRoleBinding")
    assert bindings
    for binding in bindings:
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], namespace, ref["name"]) in roles
        component = binding["metadata"]["labels"]["app.kubernetes.io/component"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": accounts[component], "namespace": "corral-system"}
        ]


def test_operator_may_touch_every_kind_it_calls() -> None:
    # corral_operator.kube names every kind the operator reads or writes.
    operator = {(g, r) for c, g, r, _, _ in NAMESPACED if c == "operator"}
    for kind, plural in kube._PLURALS.items():
        api_version = kube._API_VERSIONS[kind]
        group = api_version.split("/")[0] if "/" in api_version else ""
        assert (group, plural) in operator, f"the operator calls {kind} but may not"
