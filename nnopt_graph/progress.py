"""Progress of long steps (calibration, verification, searches), shown only by the CLI.

Passes and library code call ``track``; it yields the items unchanged and, when the CLI
has enabled display, advances a progress bar on standard error. Library callers see
nothing, which keeps the rule that passes never print.
"""

from __future__ import annotations

__all__ = ["enable", "track"]

import contextlib
import contextvars
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("nnopt_progress", default=False)


@contextlib.contextmanager
def enable() -> Iterator[None]:
    """Show progress bars for the duration of the block."""
    token = _ENABLED.set(True)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items``, with a transient progress bar when enabled."""
    if not _ENABLED.get():
        yield from items
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
