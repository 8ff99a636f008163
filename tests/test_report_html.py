"""The HTML report: first screen contents, digits shown faithfully, self-contained; browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from nnopt_graph.report_html import _num, first_screen, render_html


def _report(**over):
    report = {
        "input": {"size_bytes": 20000, "params": 5000, "nodes": 12, "flops": 100000},
        "output": {"size_bytes": 6000, "params": 5000, "nodes": 9, "flops": 100000},
        "pipeline": "fold-constants,quantize-int8",
        "passes": [
            {
                "name": "quantize-int8",
                "modified": True,
                "stats": {"nodes-quantized": 3},
                "seconds": 0.5,
                "outcome": "backed off",
                "outcome_detail": "conv2 kept float: cosine 0.98 < 0.99",
                "decisions": [
                    {"layer": "conv1", "action": "int8", "cosine": 0.9991},
                    {"layer": "conv2", "action": "kept float", "cosine": 0.98},
                ],
            }
        ],
        "fidelity": {
            "samples": 3,
            "per_output": {
                "logits": {
                    "samples": 3,
                    "shape_match": True,
                    "cosine": {
                        "min": 0.9991,
                        "p5": 0.9992,
                        "median": 0.9995,
                        "worst_index": 1,
                        "values": [0.9995, 0.9991, 0.9996],
                    },
                    "rel_l2": {
                        "max": 0.04,
                        "p95": 0.04,
                        "median": 0.03,
                        "worst_index": 1,
                        "values": [0.03, 0.04, 0.02],
                    },
                    "max_abs": {"max": 0.2},
                    "top1": {"min": 0.0, "p5": 0.0, "median": 1.0, "mean": 0.97, "worst_index": 1},
                }
            },
        },
        "guard": {
            "expr": "cosine>=0.99",
            "passed": True,
            "verdict": "kept on all 3 samples",
            "samples": 3,
            "warnings": ["only 3 samples"],
        },
        "seconds": 1.25,
    }
    report.update(over)
    return report


def test_near_one_is_never_rounded_to_one():
    assert _num(0.9991) != "1" and "0.9991" in _num(0.9991)
    assert "0.9999991" in _num(0.9999991)
    assert _num(1.0) == "1"


def test_first_screen_has_sizes_fidelity_top1_and_verdict():
    screen = first_screen(_report())
    for text in (
        "20,000 B",
        "6,000 B",
        "5,000",
        "100,000",
        "0.3000",
        "logits",
        "0.9991",
        "0.97",
        "kept on all 3 samples",
        "only 3 samples",
        "<svg",
    ):
        assert text in screen, text
    assert "Guard" in screen and "{" not in re.sub(r"<style>.*?</style>", "", screen)


def test_page_has_pass_outcomes_and_layer_decisions():
    page = render_html(_report())
    assert "backed off" in page and "conv2 kept float" in page
    assert "kept float" in page and "conv1" in page and "per layer" in page


def test_page_tolerates_a_report_without_the_new_keys():
    page = render_html({"pipeline": "default", "passes": [], "seconds": 0.1})
    assert "Not verified" in page and "No guard" in page


def test_failed_guard_is_said_in_words():
    screen = first_screen(_report(guard={"expr": "cosine>=0.999", "passed": False}))
    assert "breaks the guard cosine&gt;=0.999" in screen and "class='bad'" in screen


def test_page_is_self_contained():
    page = render_html(_report())
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)
    assert "<script" not in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (CI must install the Debian 'chromium' package)")
        pytest.skip("chromium not installed: apt-get install -y chromium")
    page = tmp_path / "report.html"
    page.write_text(render_html(_report()), encoding="utf-8")
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "nnopt-graph report" in proc.stdout and "0.9991" in proc.stdout
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
