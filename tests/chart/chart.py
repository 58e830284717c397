"""Helpers the chart tests share: render the chart with helm and pick objects out of it."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "corral"
CUSTOM_VALUES = Path(__file__).resolve().parent / "values" / "custom.yaml"
HELM = ROOT / ".tools" / "bin" / "helm"


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, check=check, timeout=timeout
    )


def render_text(*args: str, release: str = "corral", namespace: str = "corral-system") -> str:
    """``helm template`` of the chart; extra ``args`` are --set/-f flags."""
    result = helm("template", release, str(CHART), "--namespace", namespace, *args, check=False)
    if result.returncode != 0:
        raise AssertionError(f"helm template failed: {result.stderr}")
    return result.stdout


def render(
    *args: str, release: str = "corral", namespace: str = "corral-system"
) -> list[dict[str, Any]]:
    text = render_text(*args, release=release, namespace=namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def of_kind(objects: Iterable[Mapping[str, Any]], *kinds: str) -> list[Mapping[str, Any]]:
    return [obj for obj in objects if obj["kind"] in kinds]


def one(objects: Iterable[Mapping[str, Any]], kind: str, name: str) -> Mapping[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def container(deployment: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    containers: list[Mapping[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    [found] = [c for c in containers if c["name"] == name]
    return found


def plain_env(item: Mapping[str, Any]) -> dict[str, str]:
    """A container's literal env values by name (valueFrom entries left out)."""
    return {e["name"]: e["value"] for e in item.get("env") or () if "value" in e}
