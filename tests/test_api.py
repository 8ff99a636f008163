"""The public API: nnopt_graph.optimize stays the function, whatever was imported before."""

from __future__ import annotations

import subprocess
import sys


def test_optimize_is_the_function_after_its_module_is_imported():
    code = (
        "import nnopt_graph.job, nnopt_graph.cli, nnopt_graph\n"
        "assert callable(nnopt_graph.optimize), type(nnopt_graph.optimize)\n"
        "assert nnopt_graph.optimize is nnopt_graph.job.optimize\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_public_names_resolve():
    import nnopt_graph

    for name in nnopt_graph.__all__:
        assert getattr(nnopt_graph, name) is not None, name
