#!/usr/bin/env python3
"""Generate the chart's CRD templates from crds/, the single source of truth for the API.

Each ``crds/*.yaml`` becomes ``charts/corral/templates/crds/<plural>.yaml``: the same
CustomResourceDefinition, wrapped in ``crds.install`` (the chart's "corral.crds.install"
helper, which also leaves out a CRD that exists and is not the release's), with the chart's
labels and, when ``crds.keep`` is on, ``helm.sh/resource-policy: keep`` (so ``helm uninstall``
never deletes the CRDs and with them every Model and ModelServer). The CRDs live under
templates/ rather than the chart's crds/ folder because Helm never upgrades what is in crds/.

    scripts/sync-crds.py           # rewrite the chart's copies
    scripts/sync-crds.py --check   # exit 1 (listing the files) when they are stale
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIR = ROOT / "crds"
TARGET_DIR = ROOT / "charts" / "corral" / "templates" / "crds"

# Labels the chart's "corral.labels" helper sets; a source label may repeat one of them only
# with the same value, or the rendered object would carry a duplicate key.
CHART_LABELS = {"app.kubernetes.io/part-of": "corral"}
CHART_LABEL_KEYS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    *CHART_LABELS,
}


class SourceError(Exception):
    """A CRD under crds/ that cannot be turned into a chart template."""


def _escape(text: str) -> str:
    # Text that Go templates would read as an action ("{{ .Prompt }}" in a description).
    return text.replace("{{", '{{ "{{" }}')


def _leading_comments(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def _dump(key: str, value: Any, indent: int) -> list[str]:
    dumped = yaml.safe_dump({key: value}, sort_keys=False, width=100, default_flow_style=False)
    pad = " " * indent
    return [pad + line if line else line for line in _escape(dumped).splitlines()]


def render_template(source: Path) -> tuple[str, str]:
    """The template file name and text generated from one source CRD."""
    text = source.read_text()
    crd = yaml.safe_load(text)
    if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
        raise SourceError(f"{source}: not a single CustomResourceDefinition")
    meta = crd.get("metadata") or {}
    unknown = set(meta) - {"name", "labels", "annotations"}
    if unknown:
        raise SourceError(f"{source}: unsupported metadata fields {sorted(unknown)}")
    labels = dict(meta.get("labels") or {})
    for key, value in labels.items():
        if key in CHART_LABEL_KEYS and CHART_LABELS.get(key) != value:
            raise SourceError(f"{source}: label {key} collides with the chart's labels")
    extra_labels = {k: v for k, v in labels.items() if k not in CHART_LABEL_KEYS}
    annotations = dict(meta.get("annotations") or {})
    if "helm.sh/resource-policy" in annotations:
        raise SourceError(f"{source}: helm.sh/resource-policy is the chart's to set")

    out = [
        f"{{{{- /* Generated from crds/{source.name} by scripts/sync-crds.py; do not edit. */}}}}",
        f'{{{{- if include "corral.crds.install" (list . "{meta["name"]}") }}}}',
        *_escape("\n".join(_leading_comments(text))).splitlines(),
        f"apiVersion: {crd['apiVersion']}",
        f"kind: {crd['kind']}",
        "metadata:",
        f"  name: {meta['name']}",
        "  labels:",
        '    {{- include "corral.labels" . | nindent 4 }}',
    ]
    for key, value in extra_labels.items():
        out += _dump(key, value, 4)
    if annotations:
        out.append("  annotations:")
        for key, value in annotations.items():
            out += _dump(key, value, 4)
        out += [
            "    {{- if .Values.crds.keep }}",
            "    helm.sh/resource-policy: keep",
            "    {{- end }}",
        ]
    else:
        out += [
            "  {{- if .Values.crds.keep }}",
            "  annotations:",
            "    helm.sh/resource-policy: keep",
            "  {{- end }}",
        ]
    out += _dump("spec", crd["spec"], 0)
    out.append("{{- end }}")
    plural = crd["spec"]["names"]["plural"]
    return f"{plural}.yaml", "\n".join(out) + "\n"


def generate() -> dict[str, str]:
    """Every template that crds/ calls for, by file name."""
    sources = sorted(SOURCE_DIR.glob("*.yaml"))
    if not sources:
        raise SourceError(f"no CRDs under {SOURCE_DIR}")
    return dict(render_template(source) for source in sources)


def stale_files(wanted: dict[str, str]) -> list[str]:
    """Chart files that differ from, are missing from, or are not in ``wanted``."""
    present = (
        {p.name: p.read_text() for p in TARGET_DIR.glob("*.yaml")} if TARGET_DIR.is_dir() else {}
    )
    names = sorted(set(wanted) | set(present))
    return [name for name in names if wanted.get(name) != present.get(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the chart's CRDs are stale")
    args = parser.parse_args(argv)
    try:
        wanted = generate()
    except SourceError as exc:
        print(f"sync-crds: {exc}", file=sys.stderr)
        return 2
    stale = stale_files(wanted)
    if args.check:
        if stale:
            listed = ", ".join(os.path.relpath(TARGET_DIR / name, ROOT) for name in stale)
            print(f"sync-crds: stale: {listed}; run scripts/sync-crds.py", file=sys.stderr)
            return 1
        return 0
    TARGET_DIR.mkdir(parents=True, exist_ok=True)
    for name in stale:
        path = TARGET_DIR / name
        if name in wanted:
            path.write_text(wanted[name])
        else:
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
