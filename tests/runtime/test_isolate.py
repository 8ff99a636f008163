"""run_isolated / iter_isolated: a crash in the child becomes an error in the parent."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from nnopt_graph.errors import BadInputError, CheckFailedError, PassFailedError
from nnopt_graph.runtime.isolate import iter_isolated, run_isolated


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _abort_after(items: int):
    yield from range(items)
    os.kill(os.getpid(), signal.SIGABRT)


def _exit_quietly() -> None:
    os._exit(5)


def test_segfault_becomes_check_failed_error() -> None:
    with pytest.raises(CheckFailedError) as info:
        run_isolated(_segfault)
    assert str(info.value) == "ONNX Runtime crashed running the output (signal 11)"
    assert info.value.exit_code == 1


def test_crash_message_says_what_ran() -> None:
    with pytest.raises(CheckFailedError, match=r"crashed loading the input \(signal 11\)"):
        run_isolated(_segfault, what="loading the input")
    with pytest.raises(CheckFailedError, match=r"exit status 5"):
        run_isolated(_exit_quietly)


def test_result_comes_back() -> None:
    data = np.arange(12.0).reshape(3, 4)  # inherited by the child, not pickled
    out = run_isolated(np.multiply, data, 2.0)
    np.testing.assert_array_equal(out, data * 2)
    assert run_isolated(sorted, [3, 1, 2], reverse=True) == [3, 2, 1]


def test_exceptions_are_re_raised_with_their_type() -> None:
    def bad_input() -> None:
        raise BadInputError("x.npz: no samples")

    def pass_failed() -> None:
        raise PassFailedError("dedup", ["cse"], "boom")  # a custom __init__: sent as text

    with pytest.raises(BadInputError, match="no samples"):
        run_isolated(bad_input)
    with pytest.raises(RuntimeError, match="pass 'dedup' failed"):
        run_isolated(pass_failed)


def test_stream_yields_items_then_reports_the_crash() -> None:
    seen = []
    with pytest.raises(CheckFailedError, match=r"signal 6"):
        for item in iter_isolated(_abort_after, 3):
            seen.append(item)
    assert seen == [0, 1, 2]


def test_stream_without_crash() -> None:
    assert list(iter_isolated(range, 5)) == [0, 1, 2, 3, 4]


def test_isolation_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NNOPT_GRAPH_NO_ISOLATION", "1")
    assert run_isolated(os.getpid) == os.getpid()
    monkeypatch.delenv("NNOPT_GRAPH_NO_ISOLATION")
    assert run_isolated(os.getpid) != os.getpid()


class _Marks:
    """Writes a file when it is torn down."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        with open(self.path, "w") as handle:
            handle.write("torn down")


def _make(path: str, retain: bool) -> str:
    from nnopt_graph.runtime.isolate import retain_in_child

    marks = _Marks(path)
    if retain:
        retain_in_child(marks)
    del marks
    return "made"


@pytest.mark.parametrize("retain", [True, False])
def test_a_retained_object_is_not_torn_down_in_the_child(tmp_path, retain) -> None:
    path = tmp_path / "marks"
    assert run_isolated(_make, str(path), retain) == "made"
    assert path.exists() is not retain


def test_retaining_in_the_parent_does_nothing(tmp_path) -> None:
    path = tmp_path / "marks"
    _make(str(path), True)
    assert path.exists()


def _slow_square(x: int) -> int:
    import time

    time.sleep(0.2)
    return x * x


def _raise_bad() -> None:
    raise BadInputError("no such thing")


def test_started_call_returns_at_once_and_its_result_later() -> None:
    import time

    from nnopt_graph.runtime.isolate import start_isolated

    begin = time.perf_counter()
    pending = start_isolated(_slow_square, 7)
    started = time.perf_counter() - begin
    assert pending.result() == 49
    assert pending.result() == 49  # kept
    assert started < time.perf_counter() - begin  # the wait came in result()


def test_started_call_reraises_and_crashes_become_errors() -> None:
    from nnopt_graph.runtime.isolate import start_isolated

    with pytest.raises(BadInputError, match="no such thing"):
        start_isolated(_raise_bad).result()
    with pytest.raises(CheckFailedError, match="crashed loading the input"):
        start_isolated(_segfault, what="loading the input").result()


def test_cancelled_call_kills_the_child(tmp_path) -> None:
    from nnopt_graph.runtime.isolate import start_isolated

    path = tmp_path / "marks"
    pending = start_isolated(_sleep_then_mark, str(path))
    pending.cancel()
    import time

    time.sleep(0.6)
    assert not path.exists()


def _sleep_then_mark(path: str) -> None:
    import time

    time.sleep(0.4)
    with open(path, "w") as handle:
        handle.write("ran to the end")
