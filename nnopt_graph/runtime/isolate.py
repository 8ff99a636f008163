"""Run model execution in a child process, so an ONNX Runtime crash becomes an error."""

from __future__ import annotations

__all__ = ["Pending", "iter_isolated", "retain_in_child", "run_isolated", "start_isolated"]

import contextlib
import faulthandler
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection
from typing import Any, Generic, TypeVar

from nnopt_graph.errors import CheckFailedError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Set NNOPT_GRAPH_NO_ISOLATION=1 to run in the calling process (debugging, profiling).
_DISABLE_ENV = "NNOPT_GRAPH_NO_ISOLATION"


def _context() -> multiprocessing.context.DefaultContext:
    # fork: the child inherits the datasets, memory maps and imports, and starts in
    # milliseconds; arguments and the callable are never pickled.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    return context  # type: ignore[return-value]  # fork and spawn contexts both have Process


def _send_error(conn: Connection, exc: BaseException) -> None:
    try:
        payload = pickle.dumps(exc)
        pickle.loads(payload)  # some exceptions pickle but do not unpickle (custom __init__)
        conn.send(("error", payload))
    except Exception:  # an exception that does not round-trip: send its text
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        conn.send(("error-text", f"{type(exc).__name__}: {text}"))


# Objects kept alive until an isolated child exits (see retain_in_child); None in a parent.
_RETAINED: list[Any] | None = None


def retain_in_child(obj: Any) -> None:
    """In an isolated child, keep ``obj`` alive until the child exits; elsewhere do nothing.

    The child ends with ``os._exit`` right after sending its result, so nothing it holds
    needs tearing down: destroying an ONNX Runtime session of a 16k-node graph takes a
    fifth of a second, about a tenth of creating it, for memory the exit frees anyway.
    """
    if _RETAINED is not None:
        _RETAINED.append(obj)


def _child(
    conn: Connection, fn: Callable[..., Any], args: tuple, kwargs: dict, stream: bool
) -> None:
    global _RETAINED
    _RETAINED = []
    faulthandler.disable()  # a crash is reported by the parent in one line, not a dump
    try:
        if stream:
            for item in fn(*args, **kwargs):
                conn.send(("item", item))
            conn.send(("done", None))
        else:
            conn.send(("done", fn(*args, **kwargs)))
    except BaseException as exc:  # noqa: BLE001  (everything goes back to the parent)
        _send_error(conn, exc)
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # no atexit handlers, no finalizers of the parent's objects


def _crash_error(exitcode: int | None, what: str) -> CheckFailedError:
    if exitcode is not None and exitcode < 0:
        number = -exitcode
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = "unknown"
        logger.debug("child process died of %s", name)
        return CheckFailedError(f"ONNX Runtime crashed {what} (signal {number})")
    return CheckFailedError(f"ONNX Runtime crashed {what} (exit status {exitcode})")


def _raise_error(kind: str, payload: Any) -> None:
    if kind == "error":
        raise pickle.loads(payload)
    raise RuntimeError(payload)


@contextlib.contextmanager
def _child_process(
    fn: Callable[..., Any], args: tuple, kwargs: dict, what: str, *, stream: bool
) -> Iterator[Callable[[], tuple[str, Any]]]:
    """A forked child running ``fn``; yields a function that receives its next message.

    The receiver returns ("item", x) or ("done", result), re-raises the child's exception,
    and turns the child's death into a one-line CheckFailedError. On leaving, a child that
    is still running (the caller stopped early, or was interrupted) is killed.
    """
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(sender, fn, args, kwargs, stream), daemon=True)
    process.start()
    sender.close()

    def receive() -> tuple[str, Any]:
        try:
            kind, payload = receiver.recv()
        except EOFError:
            process.join()
            raise _crash_error(process.exitcode, what) from None
        if kind not in ("item", "done"):
            _raise_error(kind, payload)
        return kind, payload

    try:
        yield receive
    finally:
        receiver.close()
        if process.is_alive():
            process.kill()
        process.join()


def iter_isolated(
    fn: Callable[..., Iterable[T]], *args: Any, what: str = "running the output", **kwargs: Any
) -> Iterator[T]:
    """Run a generator function in a child process, yielding its items as they come.

    Args:
        fn: a callable returning an iterable; its items must pickle.
        *args: its positional arguments (inherited by the child, not pickled).
        what: what the child does, for the error message ("running the output").
        **kwargs: its keyword arguments.

    Raises:
        CheckFailedError: the child died (a segfault in ONNX Runtime):
            ``ONNX Runtime crashed running the output (signal 11)``.
        Exception: whatever ``fn`` raised, re-raised here.
    """
    if os.environ.get(_DISABLE_ENV):
        yield from fn(*args, **kwargs)
        return
    with _child_process(fn, args, kwargs, what, stream=True) as receive:
        while True:
            kind, payload = receive()
            if kind == "done":
                return
            yield payload


def run_isolated(
    fn: Callable[..., T], *args: Any, what: str = "running the output", **kwargs: Any
) -> T:
    """Call ``fn(*args, **kwargs)`` in a child process and return its (pickled) result.

    A crash of the child — ONNX Runtime segfaulting on a model — becomes a
    CheckFailedError (exit 1) instead of killing nnopt-graph before it can say why.

    Args:
        fn: the callable; its result must pickle.
        *args: its positional arguments (inherited by the child, not pickled).
        what: what the child does, for the error message ("running the output").
        **kwargs: its keyword arguments.

    Raises:
        CheckFailedError: the child died: ``ONNX Runtime crashed <what> (signal N)``.
        Exception: whatever ``fn`` raised, re-raised here.
    """
    if os.environ.get(_DISABLE_ENV):
        return fn(*args, **kwargs)
    with _child_process(fn, args, kwargs, what, stream=False) as receive:
        _, payload = receive()
        return payload  # type: ignore[no-any-return]


class Pending(Generic[T]):
    """A call running in a child process (``start_isolated``): ``result()`` waits for it."""

    def __init__(
        self,
        stack: contextlib.ExitStack | None = None,
        receive: Callable[[], tuple[str, Any]] | None = None,
        *,
        value: Any = None,
        error: BaseException | None = None,
    ) -> None:
        self._stack, self._receive = stack, receive
        self._value, self._error = value, error

    def result(self) -> T:
        """The call's result; re-raises its exception (or the child's crash), like run_isolated."""
        if self._receive is not None:
            receive, self._receive = self._receive, None
            try:
                _, self._value = receive()
            except BaseException as exc:
                self._error = exc
            finally:
                self.cancel()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[no-any-return]

    def cancel(self) -> None:
        """Stop waiting: a child still running is killed (no-op once the result is in)."""
        self._receive = None
        if self._stack is not None:
            stack, self._stack = self._stack, None
            stack.close()


def start_isolated(
    fn: Callable[..., T], *args: Any, what: str = "running the output", **kwargs: Any
) -> Pending[T]:
    """Start ``fn(*args, **kwargs)`` in a child process and return at once (see run_isolated).

    The caller goes on with its own work while the child runs; ``result()`` then waits
    for the child and returns what ``run_isolated`` would have (or raises what it would
    have raised). With isolation disabled the call runs here, before this returns.
    """
    if os.environ.get(_DISABLE_ENV):
        try:
            return Pending(value=fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001  (re-raised by result())
            return Pending(error=exc)
    stack = contextlib.ExitStack()
    receive = stack.enter_context(_child_process(fn, args, kwargs, what, stream=False))
    return Pending(stack, receive)
