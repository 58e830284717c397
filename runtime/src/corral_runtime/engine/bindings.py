"""llama-cpp-python's ctypes bindings first, the rest of its package while a model loads.

``import llama_cpp`` runs the package's ``__init__``, which imports the ctypes bindings
(``llama_cpp.llama_cpp``: what the engine loads and decodes with, 50-60 ms on the project
machine) and then the high-level ``llama_cpp.llama`` with numpy, jinja2 and its chat formats
(180-230 ms more). A cold start's load needs only the first part. So ``import_bindings`` places the
package in ``sys.modules`` without running its ``__init__`` (as the import system itself does
just before running it: the module made from its spec, ``__path__`` included), imports the
bindings into it and copies their names into the package as the ``__init__``'s own first line
(``from .llama_cpp import *``) does; ``complete_in_background`` then runs the ``__init__``, once,
in a thread of its own, while llama.cpp loads the model in C without the GIL.

``corral serve`` holds that thread back while it imports the web stack beside the preload's load
(``hold_background_completion``): both imports are Python and share the GIL, so run together
each ends later; the web stack first makes the server ready sooner (/readyz 40-100 ms here),
and numpy still ends before a model of any size has loaded (a first request waits for the
later of the two either way).

Until then the package module is an ``_IncompletePackage``: any name it lacks yet
(``llama_cpp.Llama``, ``from llama_cpp import Llama``, wherever in the process) completes the
package first, or waits for the thread completing it, so nothing ever sees half of it. Plain
``import llama_cpp`` returns the module at once (the import system waits only for modules it is
importing itself), so the engine's loads use it without waiting for numpy. Importing a
submodule (``llama_cpp.llama_grammar``) works as in the complete package.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
import types
from collections.abc import Mapping
from importlib.machinery import ModuleSpec
from typing import Any

log = logging.getLogger(__name__)

# The longest a held background completion waits for its release (``hold_background``).
HOLD_LIMIT_SECONDS = 10.0


def star_names(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """What ``from module import *`` binds from a module without ``__all__`` (as
    ``llama_cpp.llama_cpp``): its names that do not begin with an underscore."""
    return {name: value for name, value in namespace.items() if not name.startswith("_")}


class DeferredPackage:
    """A package imported in two steps (see the module docstring): first its submodule
    ``star_from``, whose names the ``__init__`` star-imports first and which are copied into
    the package, then the submodules ``first`` (which may read those names from the package,
    as ``llama_cpp._logger`` does); later, once, its ``__init__``."""

    def __init__(self, name: str, *, star_from: str, first: tuple[str, ...] = ()) -> None:
        self.name = name
        self.star_from = star_from
        self.first = first
        self._lock = threading.Lock()
        self._pending: tuple[types.ModuleType, ModuleSpec] | None = None
        self._completing: int | None = None  # the thread running the __init__
        self._background: threading.Thread | None = None
        self._released = threading.Event()  # a background completion may begin
        self._released.set()

    @property
    def incomplete(self) -> bool:
        """Whether the package's ``__init__`` has yet to run."""
        return self._pending is not None

    def import_first(self) -> None:
        """Place the package, its ``__init__`` not run, and import ``star_from`` and ``first``
        into it; nothing when the package is imported already (whole, or this way)."""
        with self._lock:
            if self.name in sys.modules:
                return
            spec = importlib.util.find_spec(self.name)
            if spec is None or spec.loader is None or spec.submodule_search_locations is None:
                raise ImportError(f"no package named {self.name!r}", name=self.name)
            package = importlib.util.module_from_spec(spec)
            package.__class__ = self._incomplete_class()
            sys.modules[self.name] = package
            try:
                bindings = importlib.import_module(f"{self.name}.{self.star_from}")
                vars(package).update(star_names(vars(bindings)))
                for submodule in self.first:
                    importlib.import_module(f"{self.name}.{submodule}")
            except BaseException:
                # As a failed import leaves nothing: a later ``import`` starts afresh.
                for placed in [m for m in sys.modules if m.partition(".")[0] == self.name]:
                    del sys.modules[placed]
                raise
            self._pending = (package, spec)

    def complete(self) -> None:
        """Run the package's ``__init__``, once; a caller meanwhile waits for it to end."""
        with self._lock:
            if self._pending is None:
                return
            package, spec = self._pending
            assert spec.loader is not None  # checked by import_first
            self._completing = threading.get_ident()
            try:
                spec.loader.exec_module(package)
            finally:
                self._completing = None
            package.__class__ = types.ModuleType
            self._pending = None

    def complete_in_background(self) -> None:
        """Complete the package in a thread of its own, unless complete or under way. A failure
        there is logged; the next use of a missing name tries again and raises it."""
        # Not under the lock, which a completion under way holds; a second thread started by
        # a race would find the package complete.
        if self._pending is None or self._background is not None:
            return
        self._background = threading.Thread(
            target=self._complete_logged, name=f"import {self.name}", daemon=True
        )
        self._background.start()

    def hold_background(self) -> None:
        """Make a background completion (started before or after this) wait in its thread
        until ``release_background``, or ``HOLD_LIMIT_SECONDS``. A missing name asked for
        meanwhile still completes the package at once."""
        self._released.clear()

    def release_background(self) -> None:
        """Let a held background completion begin."""
        self._released.set()

    def _complete_logged(self) -> None:
        self._released.wait(HOLD_LIMIT_SECONDS)
        try:
            self.complete()
        except Exception:
            log.exception("importing the rest of %s failed", self.name)

    def _missing(self, package: types.ModuleType, name: str) -> Any:
        """A name the incomplete package lacks, dunder names included (``__version__``,
        ``__all__`` for a star import): complete it (or wait), then look again. Not in the
        thread running the ``__init__``: there a missing name is one of a partly run module,
        as in any import."""
        if self._completing == threading.get_ident():
            raise AttributeError(
                f"partially initialized module {self.name!r} has no attribute {name!r}",
                name=name,
                obj=package,
            )
        self.complete()
        return types.ModuleType.__getattribute__(package, name)

    def _incomplete_class(self) -> type[types.ModuleType]:
        owner = self

        class _IncompletePackage(types.ModuleType):
            def __getattr__(self, name: str) -> Any:
                return owner._missing(self, name)

        return _IncompletePackage


# ``_logger`` routes llama.cpp's log through the "llama-cpp-python" logger (which the engine
# keeps to errors), as the complete package does; without it a load would print llama.cpp's
# whole log to stderr.
LLAMA_CPP = DeferredPackage("llama_cpp", star_from="llama_cpp", first=("_logger",))


def import_bindings() -> None:
    """Make ``import llama_cpp`` give at least llama.cpp's ctypes bindings and log routing,
    without numpy and the high-level half unless imported already."""
    LLAMA_CPP.import_first()


def complete_in_background() -> None:
    """Import the rest of ``llama_cpp`` (numpy, ``llama_cpp.Llama``) in a thread of its own."""
    LLAMA_CPP.complete_in_background()


def hold_background_completion() -> None:
    """Hold ``complete_in_background``'s import back until ``release_background_completion``
    (``corral serve``: while it imports the web stack)."""
    LLAMA_CPP.hold_background()


def release_background_completion() -> None:
    LLAMA_CPP.release_background()
