"""The chart over a cluster that already runs corral: ``helm install --dry-run=server`` where the
CRDs exist, and ``helm upgrade`` from the previous chart version keeping what users made.

The CRDs are the chart's templates (so upgrades upgrade them), and Helm refuses to install over
an object that is not the release's, in a server-side dry run too. The chart's
"corral.crds.install" helper looks each CRD up: one that exists without this release's ownership
annotations is left out, one the release owns stays in the release. Both branches are checked
here against the session's CRDs (applied from crds/ with kubectl, owned by no release), made the
package release's for the upgrade and given back afterwards.

The upgrade is the package release's own, in place: down to the chart as it was at
``PREVIOUS_CHART`` (from git history) owning the CRDs, a Model and ModelServer deployed under it,
then up to this tree's chart, after which the same objects, cache claim and blobs are there and
the model answers through the gateway. The release ends as it began (this tree's chart, no CRDs).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import ollama
import pytest
import yaml

from devstack.controlplane import ROOT
from devstack.stack import CHART, NAMESPACE, RELEASE, Stack
from tests.e2e_local.support import MESSAGES, OPTIONS, deploy

pytestmark = pytest.mark.cluster

# The chart before the CRDs were looked up (the commit before issue 18's work).
PREVIOUS_CHART = "8d118d6"
CRDS = ("models.corral.dev", "modelservers.corral.dev")
OWNER_ANNOTATIONS = ("meta.helm.sh/release-name", "meta.helm.sh/release-namespace")
HELM_LABEL = "app.kubernetes.io/managed-by"


def manifest_kinds(manifest: str) -> list[str]:
    return [doc["kind"] for doc in yaml.safe_load_all(manifest) if doc]


def dry_run_kinds(stack: Stack, release: str, namespace: str) -> list[str]:
    """The kinds ``helm install --dry-run=server`` of this tree's chart renders (defaults:
    ``crds.install`` on), checked against the cluster's objects as a real install is."""
    done = stack.helm(
        "install", release, str(CHART), "--namespace", namespace, "--dry-run=server",
        "--output", "json",
    )  # fmt: skip
    return manifest_kinds(json.loads(done.stdout)["manifest"])


@contextmanager
def crds_owned_by(stack: Stack, release: str, namespace: str) -> Iterator[None]:
    """The session's CRDs carry ``release``'s ownership metadata (as Helm writes it) while inside,
    and no release's afterwards."""
    stack.kubectl("label", "crd", *CRDS, f"{HELM_LABEL}=Helm", "--overwrite")
    owner = [f"{OWNER_ANNOTATIONS[0]}={release}", f"{OWNER_ANNOTATIONS[1]}={namespace}"]
    stack.kubectl("annotate", "crd", *CRDS, *owner, "--overwrite")
    try:
        yield
    finally:
        stack.kubectl("annotate", "crd", *CRDS, *(f"{key}-" for key in OWNER_ANNOTATIONS))
        stack.kubectl("label", "crd", *CRDS, f"{HELM_LABEL}-")


def test_server_dry_run_leaves_out_crds_it_does_not_own(stack: Stack) -> None:
    # The session's CRDs are no release's: a release installed now would not own them.
    kinds = dry_run_kinds(stack, "corral-dry-run", NAMESPACE)
    assert "CustomResourceDefinition" not in kinds
    assert kinds.count("Deployment") == 2, kinds


def test_server_dry_run_keeps_crds_its_release_owns(stack: Stack) -> None:
    # Kept by an uninstall of this release (or installed by it): the release takes them back.
    with crds_owned_by(stack, "corral-dry-run", NAMESPACE):
        kinds = dry_run_kinds(stack, "corral-dry-run", NAMESPACE)
    assert kinds.count("CustomResourceDefinition") == len(CRDS), kinds


@pytest.fixture
def previous_chart(tmp_path: Path) -> Path:
    """charts/corral as it was at PREVIOUS_CHART, from git history."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "archive", PREVIOUS_CHART, "charts/corral"],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"no git history to take the chart at {PREVIOUS_CHART} from: {done.stderr!r}")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(tmp_path)  # our own repository's files
    return tmp_path / "charts" / "corral"


def upgrade(stack: Stack, chart: Path, *settings: str) -> None:
    """``helm upgrade`` the package release to ``chart``, keeping its values but ``settings``."""
    stack.helm(
        "upgrade", RELEASE, str(chart), "--namespace", NAMESPACE, "--reuse-values", *settings,
        "--wait", "--timeout=5m",
    )  # fmt: skip


def what_users_made(stack: Stack, namespace: str, name: str) -> dict[str, Any]:
    """The identities an upgrade must not change: the Model, the ModelServer, the cache claim
    (uids), what was pulled (digest) and the blobs in the claim's volume."""
    model = stack.get("model", name, namespace) or {}
    server = stack.get("modelserver", name, namespace) or {}
    claim = stack.get("pvc", model["status"]["cachePVC"], namespace) or {}
    volume = stack.get("pv", claim["spec"]["volumeName"], "") or {}
    blobs = Path(volume["spec"]["hostPath"]["path"]) / "blobs"
    return {
        "model": model["metadata"]["uid"],
        "server": server["metadata"]["uid"],
        "claim": claim["metadata"]["uid"],
        "digest": model["status"]["digest"],
        "blobs": sorted((blob.name, blob.stat().st_size) for blob in blobs.iterdir()),
    }


def test_upgrade_from_the_previous_chart_keeps_models_servers_and_caches(
    stack: Stack, namespace: str, previous_chart: Path
) -> None:
    with crds_owned_by(stack, RELEASE, NAMESPACE):
        try:
            # The previous chart installs the CRDs: the release now owns them, as a user's does.
            # Taking over the session's (applied with kubectl, whose fields kubectl's field
            # manager holds) forces Helm's server-side apply; the upgrade below is a plain one.
            upgrade(stack, previous_chart, "--set", "crds.install=true", "--force-conflicts")
            served = deploy(stack, namespace, namespace, namespace, min_replicas=1)
            stack.wait_ready("modelserver", namespace, namespace, timeout=240)
            before = what_users_made(stack, namespace, namespace)
            assert before["blobs"], "the pull stored no blobs"

            upgrade(stack, CHART)
            # The CRDs stay the release's (left out, a later crds.keep=false upgrade or an
            # uninstall would delete them and every Model with them).
            manifest = stack.helm("get", "manifest", RELEASE, "--namespace", NAMESPACE).stdout
            assert manifest_kinds(manifest).count("CustomResourceDefinition") == len(CRDS)
            assert what_users_made(stack, namespace, namespace) == before
            stack.wait_ready("model", namespace, namespace, timeout=60)
            stack.wait_ready("modelserver", namespace, namespace, timeout=120)
            with ollama.Client(host=stack.gateway_url, timeout=240) as client:
                reply = client.chat(model=served, messages=MESSAGES, options=OPTIONS)
            assert str(reply.message.content).strip(), "the model answered nothing"
        finally:
            # Back to the session's release: the CRDs leave it and, kept, stay in the cluster.
            upgrade(stack, CHART, "--set", "crds.install=false")
    for crd in CRDS:
        assert stack.get("crd", crd, ""), f"{crd} went with the release's CRDs"
