"""``operator.extraEnv`` and ``gateway.extraEnv``: appended after the chart's own variables, an
entry naming a variable the chart sets replacing it (a name twice in a container's env is
refused by API servers that track managed fields), and refused by the values schema when an
entry has no valid name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.chart.chart import CHART, helm, one, render

pytestmark = pytest.mark.chart


def _env(docs: list[dict[str, Any]], deployment: str, container: str) -> list[dict[str, Any]]:
    spec = one(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    [c] = [c for c in spec["containers"] if c["name"] == container]
    return list(c.get("env") or [])


@pytest.mark.parametrize(
    ("component", "deployment", "setting"),
    [
        ("gateway", "corral-gateway", "CORRAL_GATEWAY_HOLD_DEADLINE_SECONDS"),
        ("operator", "corral-operator", "HOME"),
    ],
)
def test_extra_env_comes_after_the_charts_own(
    component: str, deployment: str, setting: str
) -> None:
    default = _env(render(), deployment, component)
    assert setting in [e["name"] for e in default]
    extra = [{"name": setting, "value": "7"}, {"name": "EXTRA_ONE", "value": "x"}]
    env = _env(
        render("--set-json", f"{component}.extraEnv={json.dumps(extra)}"), deployment, component
    )
    # The chart's own, less the one replaced, in their order; then the extra ones.
    assert env == [e for e in default if e["name"] != setting] + extra
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(
    "entry", [{"value": "1"}, {"name": "1BAD", "value": "1"}, {"name": "A", "value": 1}]
)
def test_bad_extra_env_is_refused(entry: dict[str, Any]) -> None:
    done = helm(
        "template", "x", str(CHART), "--set-json", f"gateway.extraEnv=[{json.dumps(entry)}]",
        check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert "/gateway/extraEnv/0" in done.stderr
