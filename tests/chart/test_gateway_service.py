"""The gateway Service's node port: rendered only when set and the Service type has node ports,
and refused by the values schema when it is not a port."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.chart.chart import CHART, helm, one, render

pytestmark = pytest.mark.chart


def _gateway_port(*args: str) -> Mapping[str, Any]:
    service = one(render(*args), "Service", "corral-gateway")
    ports: list[Mapping[str, Any]] = service["spec"]["ports"]
    [port] = ports
    return port


@pytest.mark.parametrize(
    ("args", "node_port"),
    [
        ((), None),
        (("--set", "gateway.service.type=NodePort"), None),
        (
            ("--set", "gateway.service.type=NodePort", "--set", "gateway.service.nodePort=11434"),
            11434,
        ),
        (
            (
                "--set",
                "gateway.service.type=LoadBalancer",
                "--set",
                "gateway.service.nodePort=32000",
            ),
            32000,
        ),
        # A ClusterIP Service has no node ports; the API server would refuse one.
        (
            ("--set", "gateway.service.type=ClusterIP", "--set", "gateway.service.nodePort=11434"),
            None,
        ),
    ],
    ids=["default", "nodeport-unset", "nodeport", "loadbalancer", "clusterip-ignores"],
)
def test_node_port_only_when_set_and_the_type_has_one(
    args: tuple[str, ...], node_port: int | None
) -> None:
    port = _gateway_port(*args)
    assert port.get("nodePort") == node_port
    assert (port["port"], port["targetPort"]) == (11434, "http")


def test_node_port_from_a_values_file(tmp_path: Path) -> None:
    # The way the local stack sets it: a values file, whose numbers reach templates as floats.
    values = tmp_path / "values.yaml"
    values.write_text("gateway:\n  service:\n    type: NodePort\n    nodePort: 31234\n")
    port = _gateway_port("-f", str(values))
    assert port["nodePort"] == 31234
    assert isinstance(port["nodePort"], int)


@pytest.mark.parametrize("value", ["0", "65536", "abc", "1.5"])
def test_bad_node_port_is_refused(value: str) -> None:
    result = helm(
        "template",
        "x",
        str(CHART),
        "--set",
        "gateway.service.type=NodePort",
        "--set",
        f"gateway.service.nodePort={value}",
        check=False,
    )
    assert result.returncode != 0
    assert "/gateway/service/nodePort" in result.stderr
