"""Progress of long steps (calibration, verification, searches), shown only by the CLI.

Passes and library code call ``track``; it yields the items unchanged and, when the CLI
has enabled display, advances a progress bar on standard error. Library callers see
nothing, which keeps the rule that passes never print.
"""

from __future__ import annotations

__all__ = ["enable", "step", "track"]

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("nnopt_progress", default=False)
# The step running now ("pass 3/10 fold-constants"), shown before every progress bar.
_STEP: contextvars.ContextVar[str] = contextvars.ContextVar("nnopt_step", default="")


@contextlib.contextmanager
def enable() -> Iterator[None]:
    """Show progress bars for the duration of the block."""
    token = _ENABLED.set(True)
    try:
        yield
    finally:
        _ENABLED.reset(token)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Say which step runs (a live status line when enabled); bars inside show its name."""
    token = _STEP.set(name)
    try:
        if not _ENABLED.get():
            yield
            return
        from rich.console import Console

        with Console(stderr=True).status(name):
            yield
    finally:
        _STEP.reset(token)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items``, with a transient progress bar (and ETA) when enabled."""
    if not _ENABLED.get():
        yield from items
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    label = f"{_STEP.get()}: {description}" if _STEP.get() else description
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)
