"""A package imported as its submodules first and its ``__init__`` later (``engine.bindings``):
on a package made here, whose ``__init__`` is slow as llama-cpp-python's is, and on
llama-cpp-python itself in a process of its own (tests/runtime/test_cold_start.py checks that
a load starts before its high-level half is imported)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral_runtime.engine.bindings import DeferredPackage, star_names

pytestmark = pytest.mark.unit

PACKAGE = "deferredpkg"
FILES = {
    # As llama_cpp's: the bindings' names star-imported, then the slow high-level half.
    "__init__.py": """
        import deferredpkg_runs
        deferredpkg_runs.RUNS.append("init")
        from .core import *
        from .high import *
        __version__ = "1.0"
    """,
    "core.py": """
        def bound():
            return "bound"
        _private = 1
    """,
    # Reads a name of the core from the package, as llama_cpp._logger does.
    "logroute.py": """
        import deferredpkg
        ROUTED = deferredpkg.bound()
    """,
    "high.py": """
        import time
        time.sleep(0.2)
        class High:
            pass
    """,
}


@pytest.fixture
def deferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DeferredPackage]:
    """The package made here, importable, and a ``DeferredPackage`` of it; the modules are
    forgotten afterwards."""
    (tmp_path / PACKAGE).mkdir()
    for name, text in FILES.items():
        (tmp_path / PACKAGE / name).write_text(textwrap.dedent(text))
    (tmp_path / f"{PACKAGE}_runs.py").write_text("RUNS = []\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield DeferredPackage(PACKAGE, star_from="core", first=("logroute",))
    for name in [m for m in sys.modules if m.partition(".")[0] in (PACKAGE, f"{PACKAGE}_runs")]:
        del sys.modules[name]


def init_runs() -> list[str]:
    """Each run of the package's ``__init__``."""
    runs: list[str] = importlib.import_module(f"{PACKAGE}_runs").RUNS
    return runs


def test_star_names_are_what_a_star_import_binds_without_all() -> None:
    assert star_names({"bound": 1, "_private": 2, "__doc__": "", "Name": 3}) == {
        "bound": 1,
        "Name": 3,
    }


def test_the_first_submodules_are_imported_without_the_init(
    deferred: DeferredPackage,
) -> None:
    deferred.import_first()
    import deferredpkg

    assert deferred.incomplete
    assert deferredpkg.bound() == "bound"  # the core's names, as its star import binds them
    assert "_private" not in vars(deferredpkg)
    assert sys.modules[f"{PACKAGE}.logroute"].ROUTED == "bound"
    assert f"{PACKAGE}.high" not in sys.modules
    assert init_runs() == []
    assert deferred.incomplete


def test_a_name_the_package_lacks_completes_it_once(deferred: DeferredPackage) -> None:
    deferred.import_first()
    import deferredpkg

    high = deferredpkg.High
    assert high is sys.modules[f"{PACKAGE}.high"].High
    assert not deferred.incomplete
    assert type(deferredpkg) is types.ModuleType
    assert init_runs() == ["init"]
    with pytest.raises(AttributeError):
        deferredpkg.Nothing  # noqa: B018
    deferred.complete()
    assert init_runs() == ["init"]


def test_a_dunder_name_the_init_binds_is_found_too(deferred: DeferredPackage) -> None:
    deferred.import_first()
    import deferredpkg

    assert deferredpkg.__version__ == "1.0"
    assert init_runs() == ["init"]


def test_threads_asking_during_a_background_completion_wait_for_it(
    deferred: DeferredPackage,
) -> None:
    deferred.import_first()
    import deferredpkg

    deferred.complete_in_background()
    seen: list[object] = []
    askers = [threading.Thread(target=lambda: seen.append(deferredpkg.High)) for _ in range(8)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(timeout=10)
    assert len(seen) == 8
    assert set(map(id, seen)) == {id(sys.modules[f"{PACKAGE}.high"].High)}
    assert init_runs() == ["init"]


def test_a_held_background_completion_waits_for_its_release(deferred: DeferredPackage) -> None:
    deferred.import_first()
    deferred.hold_background()
    deferred.complete_in_background()
    assert deferred._background is not None
    deferred._background.join(timeout=0.5)
    assert deferred.incomplete
    assert init_runs() == []
    deferred.release_background()
    deferred._background.join(timeout=10)
    assert not deferred.incomplete
    assert init_runs() == ["init"]


def test_a_name_asked_for_while_the_background_is_held_completes_at_once(
    deferred: DeferredPackage,
) -> None:
    deferred.import_first()
    import deferredpkg

    deferred.hold_background()
    deferred.complete_in_background()
    assert deferredpkg.High is sys.modules[f"{PACKAGE}.high"].High
    assert init_runs() == ["init"]
    deferred.release_background()
    assert deferred._background is not None
    deferred._background.join(timeout=10)
    assert init_runs() == ["init"]


def test_a_package_imported_whole_already_is_left_as_it_is(deferred: DeferredPackage) -> None:
    import deferredpkg

    deferred.import_first()
    assert not deferred.incomplete
    assert sys.modules[PACKAGE] is deferredpkg
    assert init_runs() == ["init"]


def test_a_failed_import_leaves_nothing_behind(deferred: DeferredPackage, tmp_path: Path) -> None:
    (tmp_path / PACKAGE / "logroute.py").write_text("raise ImportError('no log route')\n")
    with pytest.raises(ImportError, match="no log route"):
        deferred.import_first()
    assert [m for m in sys.modules if m.partition(".")[0] == PACKAGE] == []
    import deferredpkg  # whole, as any import of a package not imported yet

    assert deferredpkg.High


LLAMA_CPP_FIRST = """
import sys
from corral_runtime.engine.bindings import complete_in_background, import_bindings

import_bindings()
import llama_cpp

print(llama_cpp.llama_supports_gpu_offload() in (True, False))
print("numpy" in sys.modules, "llama_cpp.llama" in sys.modules, "llama_cpp._logger" in sys.modules)
complete_in_background()
print(llama_cpp.Llama.__name__, llama_cpp.__version__, "numpy" in sys.modules)
"""


def test_llama_cpp_gives_its_bindings_first_and_the_rest_on_completion() -> None:
    result = subprocess.run(
        [sys.executable, "-c", LLAMA_CPP_FIRST],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    import llama_cpp

    assert result.stdout.splitlines() == [
        "True",
        "False False True",  # the log route, as the complete package installs it
        f"Llama {llama_cpp.__version__} True",
    ]
