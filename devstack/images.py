"""The images built from this repository (``scripts/build-images.sh``, cached by content) and the
names pod specs ask for them by.

A cluster's pods name the public images (the chart's and the operator's defaults, e.g.
``ghcr.io/corral-dev/corral-runtime:0.1.0``). No registry is reachable here, so the node gets
the images built here under those names too, the way ``kind load`` gives a node an image: with
``imagePullPolicy: IfNotPresent`` (the defaults) the kubelet finds them and pulls nothing.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from devstack.controlplane import CACHE_ROOT, ROOT
from devstack.node import Node

CHART = ROOT / "charts" / "corral"
IMAGES_TSV = CACHE_ROOT / "images" / "images.tsv"


@dataclass(frozen=True)
class Image:
    name: str  # corral-runtime, corral-operator
    ref: str  # localhost/corral-runtime:0.1.0, as built
    archive: Path  # the OCI archive


def parse_images(tsv: str) -> list[Image]:
    images = []
    for line in tsv.splitlines():
        if line.strip():
            name, ref, archive = line.split("\t")
            images.append(Image(name, ref, Path(archive)))
    return images


def build(log: Path | None = None) -> list[Image]:
    """Build (or find cached) the images of the current tree; returns them."""
    with open(log or os.devnull, "ab") as out:
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-images.sh")],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        where = f"; its output is in {log}" if log else ""
        raise RuntimeError(f"scripts/build-images.sh failed ({done.returncode}){where}")
    return parse_images(IMAGES_TSV.read_text())


def public_names(chart: Path = CHART) -> dict[str, str]:
    """What the chart's defaults call each image: ``{"corral-runtime": "ghcr.io/…:0.1.0", …}``."""
    values = yaml.safe_load((chart / "values.yaml").read_text())
    app_version = str(yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"])
    operator_tag = values["image"].get("tag") or app_version
    runtime_tag = values["runtime"]["image"].get("tag") or app_version
    return {
        "corral-operator": f"{values['image']['repository']}:{operator_tag}",
        "corral-runtime": f"{values['runtime']['image']['repository']}:{runtime_tag}",
    }


def tag_public(node: Node, built: list[Image], chart: Path = CHART) -> None:
    """Give ``node``'s imported images the names the chart and the operator ask for."""
    public = public_names(chart)
    for image in built:
        node.tag(image.ref, public[image.name])
