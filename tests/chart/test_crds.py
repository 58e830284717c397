"""The chart's CRDs are generated from crds/ (scripts/sync-crds.py) and render back to them."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.chart.chart import ROOT, of_kind, render

pytestmark = pytest.mark.chart

SYNC = ROOT / "scripts" / "sync-crds.py"
CHART_LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
}


def _sync_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_crds", SYNC)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chart_crds_are_current() -> None:
    result = subprocess.run(
        [sys.executable, str(SYNC), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sync = _sync_module()
    target = tmp_path / "crds"
    shutil.copytree(sync.TARGET_DIR, target)
    monkeypatch.setattr(sync, "TARGET_DIR", target)
    assert sync.main(["--check"]) == 0
    stale = target / "models.yaml"
    stale.write_text(stale.read_text().replace("maxLength: 253", "maxLength: 254", 1))
    (target / "leftover.yaml").write_text("kind: Nothing\n")
    assert sync.main(["--check"]) == 1
    assert sync.main([]) == 0
    assert sync.main(["--check"]) == 0
    assert not (target / "leftover.yaml").exists()


def _strip_chart_metadata(crd: dict[str, Any]) -> dict[str, Any]:
    meta = dict(crd["metadata"])
    labels = {k: v for k, v in meta.get("labels", {}).items() if k not in CHART_LABELS}
    annotations = {
        k: v for k, v in meta.get("annotations", {}).items() if k != "helm.sh/resource-policy"
    }
    meta = {"name": meta["name"]}
    if labels:
        meta["labels"] = labels
    if annotations:
        meta["annotations"] = annotations
    return {**crd, "metadata": meta}


def test_rendered_crds_equal_the_sources() -> None:
    sources = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        sources[crd["metadata"]["name"]] = crd
    rendered = {
        crd["metadata"]["name"]: _strip_chart_metadata(dict(crd))
        for crd in of_kind(render(), "CustomResourceDefinition")
    }
    assert rendered == sources


def test_template_actions_in_a_source_are_escaped(tmp_path: Path) -> None:
    sync = _sync_module()
    source = tmp_path / "x.yaml"
    crd = yaml.safe_load((ROOT / "crds" / "corral.dev_models.yaml").read_text())
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "{{ .Prompt }}"
    source.write_text(yaml.safe_dump(crd))
    _, text = sync.render_template(source)
    assert '{{ "{{" }} .Prompt }}' in text


def _undescribed(schema: dict[str, Any], path: str) -> list[str]:
    """Paths under ``schema`` of properties with no description, array items' properties
    included. A map that keeps unknown fields (a pass-through such as an Affinity) is described
    once, as a whole: its inside is another API's, explained there."""
    missing = []
    for name, prop in (schema.get("properties") or {}).items():
        where = f"{path}.{name}"
        if not str(prop.get("description") or "").strip():
            missing.append(where)
        missing += _undescribed(prop, where)
    items = schema.get("items")
    if isinstance(items, dict):
        missing += _undescribed(items, f"{path}[]")
    return missing


@pytest.mark.parametrize("source", sorted((ROOT / "crds").glob("*.yaml")), ids=lambda p: p.name)
def test_every_field_is_described(source: Path) -> None:
    crd = yaml.safe_load(source.read_text())
    kind = crd["spec"]["names"]["kind"]
    missing = [
        where
        for version in crd["spec"]["versions"]
        for where in _undescribed(version["schema"]["openAPIV3Schema"], kind.lower())
        # ObjectMeta is Kubernetes' own, explained by it: the API server rejects a CRD that
        # says anything of metadata but its name's rules.
        if not where.startswith(f"{kind.lower()}.metadata")
    ]
    assert not missing, (
        f"{kind}: fields with no description (kubectl explain shows nothing): {missing}"
    )


def test_a_field_without_a_description_is_named() -> None:
    schema = {
        "properties": {
            "spec": {
                "description": "wanted",
                "properties": {
                    "keep": {"description": "kept", "x-kubernetes-preserve-unknown-fields": True},
                    "list": {
                        "description": "a list",
                        "items": {"properties": {"bare": {"type": "string"}}},
                    },
                },
            }
        }
    }
    assert _undescribed(schema, "x") == ["x.spec.list[].bare"]
