"""Keep Python's cyclic garbage collector off a loaded model's objects while a job runs.

A model of N nodes is millions of tracked objects that live for the whole job. The
collector's full collections scan all of them and find nothing to free: on a 16k-node
chain they took about a quarter of the job. Building the IR makes no garbage, so the
collector is paused then; afterwards the objects alive are frozen (``gc.freeze``), so
collections look only at what the job makes next, and that garbage is still freed.
"""

from __future__ import annotations

__all__ = ["frozen_heap", "paused_collector", "skip_collection_at_exit"]

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_collector() -> Iterator[None]:
    """No automatic collection in the block (for building objects that all stay alive)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Exempt every object alive at entry from collections until the block ends.

    Cyclic garbage among those objects (nodes a pass removes, say) is freed at the next
    collection after the block, not during it. Leaving the block unfreezes every frozen
    object, including any frozen before it.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def skip_collection_at_exit() -> None:
    """Spare a process that is about to exit its final collections over a large heap.

    Only for the end of a program: what is alive now is never collected afterwards (the
    operating system frees it at exit). Output must already be flushed and files closed.
    """
    gc.freeze()
