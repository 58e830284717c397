"""A budget for rendering one prompt: time, steps and output size.

Templates are untrusted (a GGUF's Jinja template, an Ollama template layer, a request's own
``template``), and a Python thread cannot be stopped from outside. So the renderers count their
own work against a ``Meter``: every loop iteration and block entered is a step, every piece of
output and every string they build counts against the size limit, and the clock is read at each
step. Once any part is spent they stop with ``TemplateBudgetError``, whichever thread they run
in. Routes render in threads of their own (``render_off_loop``, never on the event loop) inside
``metered(budget)``, so one deadline covers the whole prompt (a legacy Go template is rendered
once per turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RenderBudget:
    """What rendering one prompt may cost. The defaults are far above what a real chat template
    needs for the largest prompt a context can hold (a few milliseconds, under a megabyte)."""

    seconds: float = 5.0
    max_steps: int = 5_000_000
    max_output_chars: int = 16 * 1024 * 1024


DEFAULT_BUDGET = RenderBudget()
DEFAULT_LABEL = "the model's chat template"


class TemplateBudgetError(ValueError):
    """A template that ran out of its time, step or size budget (the request is refused)."""

    def __init__(self, kind: str, limit: str, label: str = DEFAULT_LABEL) -> None:
        super().__init__(f"{label} exceeded its {kind} budget ({limit})")
        self.kind = kind
        self.limit = limit
        self.label = label

    def named(self, label: str) -> TemplateBudgetError:
        """The same error naming the template that ran out (renderers know which one it was)."""
        return TemplateBudgetError(self.kind, self.limit, label)


class Meter:
    """Counts one render's work against its budget; not shared between threads."""

    def __init__(self, budget: RenderBudget = DEFAULT_BUDGET) -> None:
        self.budget = budget
        self.deadline = time.monotonic() + budget.seconds
        self.steps = 0
        self.output_chars = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.budget.max_steps:
            raise TemplateBudgetError("step", f"{self.budget.max_steps} steps")
        if time.monotonic() > self.deadline:
            raise TemplateBudgetError("time", f"{self.budget.seconds:g} s")

    def output(self, chars: int) -> None:
        """Text written to the prompt."""
        self.output_chars += chars
        if self.output_chars > self.budget.max_output_chars:
            raise TemplateBudgetError("size", f"{self.budget.max_output_chars} characters")

    def check_size(self, length: int) -> None:
        """A string or list built on the way (not output yet) may not exceed the output size."""
        if length > self.budget.max_output_chars:
            raise TemplateBudgetError("size", f"{self.budget.max_output_chars} characters")

    def sized(self, value: _T) -> _T:
        """``value``, if the text it stands for fits the size budget (a list holding one long
        string a thousand times stands for a thousand of them: printed, it would be that)."""
        if isinstance(value, str | bytes | list | tuple | dict):
            self.check_size(text_size(value, self.budget.max_output_chars))
        return value


# What a value that is not a string or a container counts for (a number, a boolean).
_SCALAR_SIZE = 32
# What each element of a container adds beyond its own text (separators, quotes).
_ELEMENT_SIZE = 4


def text_size(value: Any, limit: int) -> int:
    """About how many characters ``value`` prints as: strings exactly, containers as the sum of
    their elements (shared elements counted each time), anything else a few. Stops counting
    beyond ``limit`` (the answer is then only known to be larger)."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, dict | list | tuple | set | frozenset):
            total += _ELEMENT_SIZE * len(item)
            if total <= limit:  # (a huge container is not copied onto the stack)
                stack.extend(item.items() if isinstance(item, dict) else item)
        else:
            total += _SCALAR_SIZE
    return total


_CURRENT: ContextVar[Meter | None] = ContextVar("corral_template_meter", default=None)


def current_meter() -> Meter:
    """The meter of the render in progress (``metered``), or a fresh one with the defaults."""
    meter = _CURRENT.get()
    return meter if meter is not None else Meter()


@contextlib.contextmanager
def metered(budget: RenderBudget = DEFAULT_BUDGET) -> Iterator[Meter]:
    """Every render inside shares one meter, so the budget covers all of them together."""
    meter = Meter(budget)
    token = _CURRENT.set(meter)
    try:
        yield meter
    finally:
        _CURRENT.reset(token)


def render_within(budget: RenderBudget, render: Callable[[], _T]) -> _T:
    """Run ``render`` under one budget (in a thread: see ``render_off_loop``)."""
    with metered(budget):
        return render()


# Renders have threads of their own: a burst of templates that spend their whole budget waits
# here, not in the default executor that the rest of the server's blocking work shares.
RENDER_THREADS = 4
_RENDER_POOL = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="corral-render")


async def render_off_loop(budget: RenderBudget, render: Callable[[], _T]) -> _T:
    """``render`` under ``budget`` in a render thread, the event loop free meanwhile."""
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _RENDER_POOL, functools.partial(context.run, render_within, budget, render)
    )


def bounded_args(meter: Meter, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse an integer argument that would make a result larger than the size budget
    (``"x".ljust(10**9)``, ``center(10**9)``): checking after the call would be too late."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool):
            meter.check_size(abs(value))
