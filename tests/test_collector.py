"""The collector stays off a job's long-lived objects, and garbage is still freed."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref

import pytest

from nnopt_graph.core.collector import frozen_heap, paused_collector


class _Node:
    """A small object that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture(autouse=True)
def _no_frozen_objects():
    gc.unfreeze()
    yield
    gc.unfreeze()


@pytest.mark.parametrize("enabled", [True, False])
def test_paused_collector_restores_the_previous_state(enabled):
    (gc.enable if enabled else gc.disable)()
    try:
        with paused_collector():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_paused_collector_restores_after_an_error():
    gc.enable()
    with pytest.raises(RuntimeError), paused_collector():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_frozen_heap_keeps_older_garbage_until_the_block_ends():
    before = _Node()
    before.other = before
    ref = weakref.ref(before)
    with frozen_heap():
        del before  # garbage now, but frozen: not collected inside the block
        gc.collect()
        assert ref() is not None
    gc.collect()
    assert ref() is None


def test_frozen_heap_still_frees_garbage_made_inside():
    with frozen_heap():
        ref = _cycle()
        gc.collect()
        assert ref() is None
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0


def test_cli_as_a_function_leaves_the_collector_alone():
    from nnopt_graph.cli import main

    assert main(["list-passes"]) == 0
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()


def test_cli_as_the_program_skips_collection_at_exit():
    code = (
        "import gc, sys\n"
        "from nnopt_graph.cli import main\n"
        "sys.argv = ['nnopt-graph', 'list-passes']\n"
        "rc = main()\n"
        "print('FROZEN', gc.get_freeze_count() > 0, rc)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "FROZEN True 0" in run.stdout
    assert "passes:" in run.stdout  # the listing was printed before


def test_optimize_leaves_the_collector_as_it_found_it(tmp_path):
    import onnx

    from nnopt_graph import optimize

    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        "g (float[2] x) => (float[2] y) { t = Identity(x)\n y = Relu(t) }"
    )
    src = tmp_path / "in.onnx"
    onnx.save(model, src)
    gc.enable()
    result = optimize(src, tmp_path / "out.onnx")
    assert result.output is not None and result.output.exists()
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
