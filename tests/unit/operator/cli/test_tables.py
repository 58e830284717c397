"""The ``corral ps`` and ``corral models`` tables, from objects shaped as the API returns them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from corral_operator.cli.tables import (
    desired_replicas,
    model_row,
    models_table,
    processor,
    ps_table,
    render,
    running_table,
    server_row,
    state,
    until,
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


@pytest.mark.parametrize(
    ("size", "size_vram", "text"),
    [
        (1000, 0, "100% CPU"),
        (1000, 1000, "100% GPU"),
        (1000, 520, "48%/52% CPU/GPU"),
        (1000, 1001, "Unknown"),
    ],
)
def test_processor_says_where_the_model_is_as_ollama_ps(
    size: int, size_vram: int, text: str
) -> None:
    assert processor(size, size_vram) == text


@pytest.mark.parametrize(
    ("left", "text"),
    [
        (timedelta(seconds=0.5), "Less than a second from now"),
        (timedelta(seconds=1), "1 second from now"),
        (timedelta(seconds=42), "42 seconds from now"),
        (timedelta(seconds=90), "About a minute from now"),
        (timedelta(minutes=4, seconds=59), "4 minutes from now"),
        (timedelta(minutes=70), "About an hour from now"),
        (timedelta(hours=5, minutes=40), "6 hours from now"),
        (timedelta(days=3), "3 days from now"),
        (timedelta(days=30), "4 weeks from now"),
        (timedelta(days=200), "6 months from now"),
        (timedelta(days=3 * 365), "3 years from now"),
        (timedelta(days=293 * 365), "Forever"),
        (timedelta(seconds=-1), "Stopping..."),
    ],
)
def test_until_reads_as_ollama_ps(left: timedelta, text: str) -> None:
    assert until(NOW + left, NOW) == text


def test_until_without_a_time_is_never() -> None:
    assert until(None, NOW) == "Never"


def test_running_table_is_ollama_ps_of_a_server() -> None:
    loaded = [
        {
            "name": "gemma3:270m",
            "model": "gemma3:270m",
            "size": 291_000_000,
            "digest": "e7d36fb2c3b3293cfe56d55889867a064b3a2b22e98335f2e6e8a387e081d6be",
            "expires_at": "2025-06-01T12:04:30.123456789Z",
            "size_vram": 0,
            "context_length": 4096,
        },
        {
            "name": "qwen3:8b",
            "size": 6_100_000_000,
            "digest": "sha256:500a1f067a9f782620b40bee6f7b0c89e17ae61f686b92c24933e4ca4b2b8b41",
            "expires_at": "2318-11-26T00:00:00Z",
            "size_vram": 3_172_000_000,
            "context_length": 40960,
        },
    ]
    assert running_table(loaded, NOW).splitlines() == [
        "NAME          ID             SIZE     PROCESSOR         CONTEXT   UNTIL",
        "gemma3:270m   e7d36fb2c3b3   291 MB   100% CPU          4096      4 minutes from now",
        "qwen3:8b      500a1f067a9f   6.1 GB   48%/52% CPU/GPU   40960     Forever",
    ]
    assert running_table([], NOW) == "NAME   ID   SIZE   PROCESSOR   CONTEXT   UNTIL"
