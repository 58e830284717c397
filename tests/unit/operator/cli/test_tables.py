"""The ``corral ps`` and ``corral models`` tables, from objects shaped as the API returns them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from corral_operator.cli.tables import (
    desired_replicas,
    model_row,
    models_table,
    ps_table,
    render,
    server_row,
    state,
)

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def server(name: str, **status: Any) -> dict[str, Any]:
    spec = status.pop("spec", {})
    return {
        "metadata": {"name": name},
        "spec": {"models": [name], "minReplicas": 0, "maxReplicas": 2, **spec},
        "status": status,
    }


def ready(reason: str, status: str = "True") -> list[dict[str, str]]:
    return [{"type": "Ready", "status": status, "reason": reason}]


def test_render_aligns_columns() -> None:
    text = render(("A", "LONGER", "C"), [("xyz", "1", "tail"), ("p", "22", "")])
    assert text.splitlines() == ["A     LONGER   C", "xyz   1        tail", "p     22"]


def test_desired_replicas_is_clamped_or_min() -> None:
    assert desired_replicas({"minReplicas": 1, "maxReplicas": 3}) == 1
    assert desired_replicas({"minReplicas": 0, "maxReplicas": 3, "replicas": 5}) == 3
    assert desired_replicas({"minReplicas": 2, "maxReplicas": 3, "replicas": 0}) == 2
    assert desired_replicas({}) == 0


def test_server_row_running() -> None:
    obj = server(
        "gemma3-270m",
        spec={"replicas": 1, "keepAliveSeconds": 600},
        readyReplicas=1,
        lastRequestTime="2025-06-01T11:57:48Z",
        conditions=ready("Available"),
    )
    assert server_row(obj, NOW, ["gemma3:270m", "gemma3:270m"]) == (
        "gemma3-270m",
        "gemma3-270m",
        "1/1",
        "2m12s",
        "10m",
        "Available",
        "gemma3:270m",
    )


def test_server_row_scaled_to_zero_before_any_request() -> None:
    obj = server("idle", conditions=ready("ScaledToZero"))
    assert server_row(obj, NOW) == ("idle", "idle", "0/0", "-", "5m", "ScaledToZero", "-")


def test_server_row_pods_that_answered_with_nothing_loaded() -> None:
    obj = server("s", spec={"replicas": 1}, readyReplicas=1, conditions=ready("Available"))
    assert server_row(obj, NOW, [])[-1] == "(none)"


def test_state_without_conditions_or_reason() -> None:
    assert state({"status": {}}) == "Pending"
    assert state({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}) == "NotReady"
    assert state({"status": {"conditions": ready("ModelsNotReady", "False")}}) == ("ModelsNotReady")


def test_ps_table_sorted_with_loaded_by_name() -> None:
    text = ps_table(
        [server("b", conditions=ready("ScaledToZero")), server("a", readyReplicas=1)],
        NOW,
        {"a": ["x:1"]},
    )
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "MODELS", "READY", "IDLE", "KEEP-ALIVE", "STATE", "LOADED"]
    assert lines[1].split() == ["a", "a", "1/0", "-", "5m", "Pending", "x:1"]
    assert lines[2].split() == ["b", "b", "0/0", "-", "5m", "ScaledToZero", "-"]


def test_ps_table_with_no_servers_is_the_header() -> None:
    assert ps_table([], NOW).split() == [
        "NAME",
        "MODELS",
        "READY",
        "IDLE",
        "KEEP-ALIVE",
        "STATE",
        "LOADED",
    ]


def test_model_rows() -> None:
    pulled = {
        "metadata": {"name": "gemma3-270m"},
        "spec": {"source": "ollama://gemma3:270m"},
        "status": {
            "sizeBytes": 253113024,
            "parameterSize": "268.10M",
            "quantization": "Q4_K_M",
            "conditions": ready("Pulled"),
        },
    }
    pulling = {
        "metadata": {"name": "big"},
        "spec": {"source": "hf://o/r/big.gguf"},
        "status": {"conditions": ready("Pulling", "False")},
    }
    new = {"metadata": {"name": "new"}, "spec": {"source": "x:1"}}
    assert model_row(pulled) == (
        "gemma3-270m",
        "ollama://gemma3:270m",
        "True",
        "253 MB",
        "268.10M",
        "Q4_K_M",
    )
    assert model_row(pulling) == ("big", "hf://o/r/big.gguf", "Pulling", "-", "-", "-")
    assert model_row(new) == ("new", "x:1", "Pending", "-", "-", "-")
    lines = models_table([pulling, pulled]).splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "READY", "SIZE", "PARAMETERS", "QUANTIZATION"]
    assert [line.split()[0] for line in lines[1:]] == ["big", "gemma3-270m"]
