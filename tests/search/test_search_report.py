"""The search's HTML report on hand-made records: points, links, what is left out."""

from __future__ import annotations

import re

from nnopt_graph.search.report import render_front_html

META = {"input": "m.onnx", "target": "cpu", "guard": "cosine.min>=0.99", "evaluated": 4}


def _record(text: str, ratio: float, cosine: float | None, size: int, ok: bool = True) -> dict:
    return {
        "pipeline": text,
        "status": "ok",
        "guard_passed": ok,
        "modelled": {"ratio": ratio},
        "latency_ratio": {"min": ratio * 0.9, "median": ratio, "max": ratio * 1.1},
        "worst": {"cosine": cosine},
        "size": size,
    }


def _front_points(page: str) -> list[str]:
    return re.findall(r"class='front-point' data-n='(\d\d)'", page)


def test_one_point_per_front_record_and_grey_for_the_rest() -> None:
    front = [_record("a", 0.5, 0.995, 100), _record("b", 0.8, 1.0, 300)]
    off = _record("c", 0.9, 0.996, 400)
    page = render_front_html(META, front, [*front, off], front[0])
    assert _front_points(page) == ["00", "01"]
    assert page.count("class='candidate'") == 1
    assert "<a href='best.onnx'>best.onnx</a>" in page and "(best.onnx)" in page


def test_bigger_model_gets_a_bigger_circle() -> None:
    front = [_record("small", 0.5, 0.995, 100), _record("big", 0.8, 0.999, 10_000)]
    page = render_front_html(META, front, front, front[0])
    radii = [float(r) for r in re.findall(r"class='front-point'[^>]* r='([\d.]+)'", page)]
    assert radii[0] < radii[1]


def test_candidates_failing_the_guard_are_not_plotted() -> None:
    front = [_record("a", 0.5, 0.995, 100)]
    failed = _record("lossy", 0.3, 0.5, 50, ok=False)
    page = render_front_html(META, front, [*front, failed], front[0])
    assert page.count("class='candidate'") == 0
    assert _front_points(page) == ["00"]
    # Still listed among every candidate, marked as failing the guard.
    assert "<code>lossy</code>" in page


def test_a_record_without_cosine_is_tabled_not_plotted() -> None:
    front = [_record("a", 0.5, None, 100), _record("b", 0.7, 0.999, 100)]
    page = render_front_html(META, front, front, front[1])
    assert _front_points(page) == ["01"]
    assert "id='front-00'" in page


def test_empty_front_says_so() -> None:
    page = render_front_html(META, [], [_record("x", 1.0, 0.2, 1, ok=False)], None)
    assert _front_points(page) == []
    assert "none met the guard" in page
    assert "No candidate" in page
