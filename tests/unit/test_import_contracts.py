"""The layers between modules (.importlinter) hold on the tree, and an import that crosses one
fails the lint: the contracts are enforced, not only written down."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".importlinter"
PACKAGES = {
    "corral_runtime": ROOT / "runtime" / "src" / "corral_runtime",
    "corral_operator": ROOT / "operator" / "src" / "corral_operator",
    "devstack": ROOT / "devstack",
}
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(path_entry: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages found first on ``path_entry``."""
    return subprocess.run(
        [str(LINT_IMPORTS), str(CONFIG), "--no-cache"],
        cwd=path_entry,
        env={"PYTHONPATH": str(path_entry), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_packages(destination: Path) -> None:
    for name, source in PACKAGES.items():
        shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))


def test_the_tree_keeps_every_contract(tmp_path: Path) -> None:
    copy_packages(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # The store is the runtime's ground floor: it never reaches up to the app.
        ("corral_runtime/store/names.py", "import corral_runtime.app", "runtime's layers"),
        # The runtime stands alone in its image.
        ("corral_runtime/engine/types.py", "import corral_operator.api", "runtime stands alone"),
        # Each API's front door stands without the other's.
        (
            "corral_runtime/api/serving_openai.py",
            "import corral_runtime.api.ollama_protocol",
            "imports nothing of Ollama's",
        ),
        # The gateway never reaches into the controller.
        (
            "corral_operator/gateway/protocol.py",
            "import corral_operator.handlers",
            "independent of each other",
        ),
        # The operator image has no runtime: the controller (here through the ground floor it
        # imports) and the gateway cannot use one of its modules.
        (
            "corral_operator/sources.py",
            "import corral_runtime.store.modelfile",
            "operator image has no runtime",
        ),
        (
            "corral_operator/gateway/protocol.py",
            "import corral_runtime.store.names",
            "operator image has no runtime",
        ),
        # Builders do not ask planners.
        (
            "corral_operator/builders/common.py",
            "import corral_operator.planners.model",
            "controller's layers",
        ),
        # A module outside every layer is a contract failure too (exhaustive contracts).
        ("corral_operator/unlayered.py", "", "not listed as layers"),
    ],
)
def test_an_import_across_a_layer_fails_the_lint(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    copy_packages(tmp_path)
    target = tmp_path / module
    existing = target.read_text() if target.exists() else ""
    target.write_text(f"{existing}\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    # The report wraps long contract names at the terminal's width.
    assert contract in " ".join(result.stdout.split()), result.stdout
