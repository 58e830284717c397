"""helm and kubectl, installed by scripts/install-tools.sh, run on this machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.chart

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("tool", "args", "expect"),
    [
        ("helm", ["version", "--short"], "v"),
        ("kubectl", ["version", "--client"], "Client Version"),
    ],
)
def test_tool_runs(tool: str, args: list[str], expect: str) -> None:
    out = subprocess.run(
        [str(ROOT / ".tools" / "bin" / tool), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert expect in out.stdout
