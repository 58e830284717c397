"""devstack.provisioner's decisions: which claims it binds, with which StorageClass, to what
volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from devstack.node import PROVISIONER as NODE_PROVISIONER
from devstack.node import STORAGE_CLASS, storage_class
from devstack.provisioner import DEFAULT_CLASS, LABEL, PROVISIONER, claim_class, ours, volume_for

pytestmark = pytest.mark.unit

UID = "6f1c2a9e-0d4b-4c1e-9a57-3f0e8b2d7c11"


def _class(name: str, provisioner: str = PROVISIONER, default: bool = False) -> dict[str, Any]:
    annotations = {DEFAULT_CLASS: "true"} if default else {}
    return {"metadata": {"name": name, "annotations": annotations}, "provisioner": provisioner}


def _claim(
    storage_class_name: str | None = None,
    phase: str | None = "Pending",
    volume_name: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "metadata": {"name": "models-default", "namespace": "team-a", "uid": UID},
        "spec": {"accessModes": ["ReadWriteMany"], **spec},
        "status": {"phase": phase} if phase else {},
    }
    if storage_class_name is not None:
        claim["spec"]["storageClassName"] = storage_class_name
    if volume_name is not None:
        claim["spec"]["volumeName"] = volume_name
    return claim


# The node's own StorageClass (the default), a cloud one, and another local one.
CLASSES = [
    _class("fast", provisioner="ebs.csi.aws.com"),
    storage_class(),
    _class("other-local", provisioner="rancher.io/local-path"),
]


def test_the_node_makes_the_class_this_provisioner_serves() -> None:
    assert NODE_PROVISIONER == PROVISIONER
    assert storage_class()["metadata"]["annotations"][DEFAULT_CLASS] == "true"


@pytest.mark.parametrize(
    ("claim", "classes", "expected"),
    [
        (_claim("fast"), CLASSES, "fast"),
        (_claim(), CLASSES, STORAGE_CLASS),
        (_claim(), [_class("fast"), _class("slow", default=True)], "slow"),
        # No default class: the claim waits for a matching volume.
        (_claim(), [_class("fast"), _class("slow")], None),
        (_claim(), [], None),
        # "" asks for no class at all, so no default is given.
        (_claim(""), CLASSES, ""),
    ],
    ids=["named", "default", "default-annotated", "no-default", "no-classes", "empty-class"],
)
def test_claim_class(
    claim: dict[str, Any], classes: list[dict[str, Any]], expected: str | None
) -> None:
    assert claim_class(claim, classes) == expected


def test_a_default_annotation_other_than_true_is_no_default() -> None:
    classes = [{"metadata": {"name": "x", "annotations": {DEFAULT_CLASS: "false"}}}]
    assert claim_class(_claim(), classes) is None


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (_claim(), True),
        (_claim(STORAGE_CLASS), True),
        # Another provisioner's classes are left to it.
        (_claim("fast"), False),
        (_claim("other-local"), False),
        (_claim("missing"), False),
        (_claim(""), False),
        # Only Pending, unbound claims.
        (_claim(phase="Bound", volume_name="pvc-x"), False),
        (_claim(phase="Lost"), False),
        (_claim(phase=None), False),
        (_claim(volume_name="pre-made"), False),
    ],
    ids=[
        "default",
        "named",
        "cloud-class",
        "other-provisioner",
        "unknown-class",
        "no-class",
        "bound",
        "lost",
        "no-phase",
        "names-a-volume",
    ],
)
def test_ours(claim: dict[str, Any], expected: bool) -> None:
    assert ours(claim, CLASSES) is expected


def test_ours_when_the_default_class_is_another_provisioners() -> None:
    classes = [
        {**storage_class(), "metadata": {"name": STORAGE_CLASS}},
        _class("cloud", provisioner="ebs.csi.aws.com", default=True),
    ]
    assert not ours(_claim(), classes)
    assert ours(_claim(STORAGE_CLASS), classes)


def test_volume_for(tmp_path: Path) -> None:
    claim = _claim(resources={"requests": {"storage": "50Gi"}}, volumeMode="Filesystem")
    path = tmp_path / "team-a-models-default-6f1c2a9e"
    volume = volume_for(claim, path, STORAGE_CLASS)
    assert (volume["apiVersion"], volume["kind"]) == ("v1", "PersistentVolume")
    assert volume["metadata"]["name"] == f"pvc-{UID}"
    assert volume["metadata"]["labels"] == {LABEL: "hostpath"}
    assert volume["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == PROVISIONER
    spec = volume["spec"]
    assert spec["hostPath"] == {"path": str(path), "type": "Directory"}
    assert spec["capacity"] == {"storage": "50Gi"}
    assert spec["accessModes"] == ["ReadWriteMany"]
    assert spec["storageClassName"] == STORAGE_CLASS
    assert spec["persistentVolumeReclaimPolicy"] == "Delete"
    assert spec["volumeMode"] == "Filesystem"
    # Bound to this claim only: a claim of the same name made again (another uid) is not.
    assert spec["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": "team-a",
        "name": "models-default",
        "uid": UID,
    }


def test_volume_for_a_claim_that_says_little(tmp_path: Path) -> None:
    claim = _claim()
    del claim["spec"]["accessModes"]
    spec = volume_for(claim, tmp_path, "standard")["spec"]
    assert spec["capacity"] == {"storage": "1Gi"}
    assert spec["accessModes"] == ["ReadWriteOnce"]
    assert spec["volumeMode"] == "Filesystem"
