"""Importing the runtime's app does not import llama.cpp's bindings or numpy: ``corral serve``
imports them in a background thread beside the web stack (``start_engine_import``), and a cold
start's critical path must not wait for them twice."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

HEAVY = ("numpy", "llama_cpp")


def modules_after(code: str) -> set[str]:
    """Which of ``HEAVY`` a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(result.stdout.split())


def test_importing_the_app_leaves_the_engine_s_imports_for_later() -> None:
    assert modules_after("import corral_runtime.app") == set()


def test_the_engine_import_thread_imports_llama_cpp_and_numpy() -> None:
    code = (
        "from corral_runtime.commands.serve import start_engine_import\n"
        "start_engine_import().join()"
    )
    assert modules_after(code) == set(HEAVY)
