"""The model probe's child (``probe.run_child``): its exit status and stderr; killed with its
whole process group, and reaped, when the load asking for it is abandoned (its stop raises) or
it outlives its timeout (tests/runtime/test_cold_start.py stops a real server's probe)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from corral_runtime.engine.probe import run_child

pytestmark = pytest.mark.unit

# A child that starts a grandchild in its group, writes both their pids to argv[1], and sleeps.
FAMILY = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(60)
"""


class Abandoned(Exception):
    pass


def gone(pid: int) -> bool:
    """Whether ``pid`` has ended: no such process, or a zombie (its killer's parent reaps it
    in its own time: a grandchild's is whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_gone(pid: int, within: float = 5) -> bool:
    deadline = time.monotonic() + within
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_child_that_ends_gives_its_status_and_stderr() -> None:
    command = [sys.executable, "-c", "import sys; sys.stderr.write('said so'); sys.exit(3)"]
    assert run_child(command, timeout=60) == (3, b"said so")
    assert run_child([sys.executable, "-c", "pass"], timeout=60, stop=lambda: None) == (0, b"")


def test_a_stop_kills_the_child_and_its_group_and_reaps_it(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    def stop() -> None:
        if pids.exists():
            raise Abandoned

    started = time.monotonic()
    with pytest.raises(Abandoned):
        run_child([sys.executable, "-c", FAMILY, str(pids)], timeout=60, stop=stop)
    assert time.monotonic() - started < 10  # not the child's minute
    child, grandchild = (int(pid) for pid in pids.read_text().split())
    with pytest.raises(ProcessLookupError):  # reaped: not even a zombie is left
        os.kill(child, 0)
    assert wait_gone(grandchild)


def test_a_child_past_its_timeout_is_killed_with_its_group(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    with pytest.raises(subprocess.TimeoutExpired):
        run_child([sys.executable, "-c", FAMILY, str(pids)], timeout=5)
    child, grandchild = (int(pid) for pid in pids.read_text().split())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert wait_gone(grandchild)
