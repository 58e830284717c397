"""Importing the runtime's app does not import llama.cpp's bindings or numpy, and starting the
engine does not import the web stack: ``corral serve`` starts the engine (and a preload) first
and imports the web stack beside the load (``corral_runtime.startup``), so a cold start's
critical path waits for neither twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

HEAVY = ("numpy", "llama_cpp")
WEB = ("fastapi", "starlette", "uvicorn")


def modules_after(code: str, among: tuple[str, ...] = HEAVY) -> set[str]:
    """Which of ``among`` a fresh interpreter holds after running ``code``."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {among!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return set(result.stdout.split())


def test_importing_the_app_leaves_the_engine_s_imports_for_later() -> None:
    assert modules_after("import corral_runtime.app") == set()


def test_starting_the_engine_imports_llama_cpp_s_bindings_alone_and_no_web_stack(
    tmp_path: Path,
) -> None:
    # Not numpy and llama-cpp-python's high-level half either: a load imports them as it runs
    # (corral_runtime.engine.bindings), and without a preload no load has started.
    code = (
        "import asyncio\n"
        "from corral_runtime.metrics import RuntimeMetrics\n"
        "from corral_runtime.settings import RuntimeSettings\n"
        "from corral_runtime.startup import start_engine\n"
        "async def main():\n"
        f"    settings = RuntimeSettings(models={str(tmp_path)!r})\n"
        "    await start_engine(settings, RuntimeMetrics()).close()\n"
        "asyncio.run(main())"
    )
    assert modules_after(code, HEAVY + WEB + ("llama_cpp.llama",)) == {"llama_cpp"}
