"""Reading the API server's refusals: a create refused because the namespace is being deleted."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException

from corral_operator.kube import namespace_terminating

pytestmark = pytest.mark.unit


def _error(status: int, body: object) -> ApiException:
    error = ApiException(status=status, reason="Forbidden")
    error.body = body if isinstance(body, str) else json.dumps(body)
    return error


TERMINATING = {
    "kind": "Status",
    "status": "Failure",
    "message": 'jobs.batch "corral-gc-x" is forbidden: unable to create new content in namespace '
    "t-1 because it is being terminated",
    "reason": "Forbidden",
    "details": {
        "name": "corral-gc-x",
        "group": "batch",
        "kind": "jobs",
        "causes": [
            {
                "reason": "NamespaceTerminating",
                "message": "namespace t-1 is being terminated",
                "field": "metadata.namespace",
            }
        ],
    },
    "code": 403,
}


def test_a_create_in_a_terminating_namespace() -> None:
    assert namespace_terminating(_error(403, TERMINATING))


@pytest.mark.parametrize(
    "error",
    [
        _error(403, {**TERMINATING, "details": {"causes": [{"reason": "FieldValueInvalid"}]}}),
        _error(403, {"kind": "Status", "reason": "Forbidden", "code": 403}),  # RBAC
        _error(409, TERMINATING),
        _error(403, "not json"),
        _error(403, "[1, 2]"),
        _error(403, {"details": {"causes": "NamespaceTerminating"}}),
    ],
)
def test_other_refusals(error: ApiException) -> None:
    assert not namespace_terminating(error)
