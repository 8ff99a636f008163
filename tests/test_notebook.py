"""docs/quickstart.ipynb executes top to bottom; OptimizeResult renders in Jupyter."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnopt_graph.job import OptimizeResult

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "quickstart.ipynb"


def test_optimize_result_renders_first_screen():
    report = {
        "input": {"size_bytes": 100},
        "output": {"size_bytes": 50},
        "passes": [],
        "pipeline": "default",
        "seconds": 0.1,
        "guard": {"expr": None},
    }
    html = OptimizeResult(None, None, [], None, report, None)._repr_html_()  # type: ignore[arg-type]
    assert "100 B" in html and "50 B" in html and "No guard" in html


def test_quickstart_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    shown = [o for o in outputs if o.output_type == "execute_result" and "text/html" in o.data]
    assert shown and "Final fidelity" in shown[0].data["text/html"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "cosine_min 0.99" in text and "quantize-int8" in text
