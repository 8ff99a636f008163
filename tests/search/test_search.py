"""nnopt-graph search on the digits CNN with the local executor; front, best, resume, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nnopt_graph.cli import main
from nnopt_graph.search.cache import CandidateCache
from nnopt_graph.search.run import pareto_front, run_search
from nnopt_graph.search.space import default_space, load_space
from tests.search.digits import CALIB, HELDOUT, MODEL, ROOT

GUARD = "cosine.min>=0.99"
# The target-cpu preset, spelled out: the search must enqueue exactly this text.
CPU_PRESET = (
    "default,merge-parallel-matmuls,fold-conv-affine,fuse-hardswish,quantize-dynamic-int8,"
    "quantize-int8"
)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("search") / "out"
    code = main(
        [
            "search",
            str(MODEL),
            str(out),
            "--target",
            "cpu",
            "--calib",
            str(CALIB),
            "--eval",
            str(HELDOUT),
            "--guard",
            GUARD,
            "--trials",
            "3",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    return out


def test_outdir_holds_front_and_best(searched: Path) -> None:
    front = json.loads((searched / "front.json").read_text())
    assert (searched / "best.onnx").stat().st_size > 0
    assert (searched / "front.md").read_text().startswith("# Search front")
    assert len(front["candidates"]) == 3
    assert front["evaluated"] == 3
    assert front["front"], "no front"
    for n, entry in enumerate(front["front"]):
        assert (searched / entry["model"]).exists()
        text = (searched / "front" / f"{n:02d}.pipeline.txt").read_text().strip()
        assert text == entry["pipeline"]
    # The warm start: the cpu preset and the lossless default are the first candidates.
    assert [c["pipeline"] for c in front["candidates"][:2]] == [
        CPU_PRESET,
        "default",
    ]
    # best = the fastest of the confirmation run, which re-timed the preset with the front.
    conf = front["confirmation"]
    feasible = {c["pipeline"] for c in front["candidates"] if c["guard_passed"]}
    timed = [e["pipeline"] for e in conf["entries"]]
    preset = CPU_PRESET
    assert preset in timed or preset not in feasible
    assert set(timed) <= feasible
    # The reference scores as the faster of its two sessions (the A-vs-A copy), the others
    # by their median ratio; entries come best first, and best is the first.
    scores = [e["score"] for e in conf["entries"]]
    assert scores == sorted(scores)
    for e in conf["entries"]:
        if e["pipeline"] == conf["reference"]:
            assert e["score"] == min(1.0, conf["noise_a_vs_a"]["median"])
        else:
            assert e["score"] == e["ratio"]["median"]
    fastest = conf["entries"][0]
    assert (searched / "best.pipeline.txt").read_text().strip() == fastest["pipeline"]
    assert front["best"]["pipeline"] == fastest["pipeline"] == conf["best"]
    assert conf["windows"] >= 20 and conf["noise_a_vs_a"]["median"] > 0


def test_best_pipeline_reruns_with_opt_and_meets_the_guard(searched: Path, tmp_path: Path) -> None:
    from nnopt_graph.job import optimize

    text = (searched / "best.pipeline.txt").read_text().strip()
    out = tmp_path / "rerun.onnx"
    code = main(
        [
            "opt",
            str(MODEL),
            str(out),
            "-p",
            text,
            "--target",
            "cpu",
            "--calib",
            str(CALIB),
            "--eval",
            str(HELDOUT),
            "--guard",
            GUARD,
        ]
    )
    assert code == 0
    # Deterministic: the re-run writes the same bytes as the search's best.onnx.
    assert out.read_bytes() == (searched / "best.onnx").read_bytes()
    result = optimize(
        MODEL,
        tmp_path / "again.onnx",
        text,
        target="cpu",
        calib=CALIB,
        eval_data=HELDOUT,
        guard=GUARD,
    )
    if result.report["guard"]["passed"] is not None:
        assert result.report["guard"]["passed"] is True
    assert result.report["fidelity"]["worst"]["cosine"] >= 0.99


def test_resume_evaluates_no_new_candidate(searched: Path, tmp_path: Path) -> None:
    copy = tmp_path / "out"
    shutil.copytree(searched, copy)
    # The cached model paths point into the first OUTDIR, which still exists.
    results = run_search(
        MODEL, copy, target="cpu", calib=CALIB, eval_data=HELDOUT, guard=GUARD, trials=3, workers=1
    )
    assert results[0].evaluated == 0
    assert len(results[0].records) == 3
    assert json.loads((copy / "front.json").read_text())["evaluated"] == 0


def test_cache_key_changes_with_guard(searched: Path, tmp_path: Path) -> None:
    # A different guard is a different job: the cache must not answer for it.
    cache = CandidateCache(searched)
    assert len(cache.entries) == 3
    from nnopt_graph.search.cache import candidate_key, file_sha256

    sha = file_sha256(MODEL)
    data = [file_sha256(CALIB), file_sha256(HELDOUT)]
    keys = set(cache.entries)
    assert candidate_key(sha, "default", data, "cpu", GUARD) in keys
    assert candidate_key(sha, "default", data, "cpu", "cosine.min>=0.999") not in keys
    assert candidate_key(sha, "default", data, "cuda", GUARD) not in keys
    assert candidate_key(sha, "default", [data[0], None], "cpu", GUARD) not in keys


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nnopt_graph.cli", *argv], capture_output=True, text=True, cwd=ROOT
    )


@pytest.mark.parametrize(
    "argv",
    [
        [str(MODEL), "OUT", "--calib", str(CALIB)],  # no --target
        [str(MODEL), "OUT", "--target", "cpu"],  # no --calib
        [str(MODEL), "OUT", "--target", "gpu", "--calib", str(CALIB)],
        ["missing.onnx", "OUT", "--target", "cpu", "--calib", str(CALIB)],
        [str(MODEL), "OUT", "--target", "cpu", "--calib", "missing.npz"],
        [str(MODEL), "OUT", "--target", "cpu", "--calib", str(CALIB), "--trials", "0"],
        [str(MODEL), "OUT", "--target", "cpu", "--calib", str(CALIB), "--guard", "cosine>>1"],
        [str(MODEL), "OUT", "--target", "cpu", "--calib", str(CALIB), "--confirm", "-1"],
        [str(MODEL), "OUT", "--target", "cpu", "--calib", str(CALIB), "--confirm", "two"],
        [str(MODEL), "OUT", "--target", "cpu", "--calib", str(CALIB), "--strategy", "bayes"],
        [
            str(MODEL),
            "OUT",
            "--target",
            "cpu",
            "--calib",
            str(CALIB),
            "--trials",
            "2",
            "--budget-minutes",
            "1",
        ],
    ],
)
def test_bad_input_exits_2_with_one_line(argv: list[str], tmp_path: Path) -> None:
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    proc = _run(["search", *argv])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnopt-graph: error:"), proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_space_file_exits_2(tmp_path: Path) -> None:
    space = tmp_path / "space.json"
    space.write_text(
        json.dumps({"base": "default", "stages": [{"name": "q", "choices": ["no-such-pass"]}]})
    )
    proc = _run(
        [
            "search",
            str(MODEL),
            str(tmp_path / "out"),
            "--target",
            "cpu",
            "--calib",
            str(CALIB),
            "--space",
            str(space),
        ]
    )
    assert proc.returncode == 2
    assert "no-such-pass" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_folder_without_models_exits_2(tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    assert (
        main(
            [
                "search",
                str(tmp_path / "models"),
                str(tmp_path / "out"),
                "--target",
                "cpu",
                "--calib",
                str(CALIB),
            ]
        )
        == 2
    )


def test_report_html_plots_one_point_per_front_candidate(searched: Path) -> None:
    import re

    front = json.loads((searched / "front.json").read_text())["front"]
    page = (searched / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    # One blue point per front candidate, numbered like front/NN.onnx, each linked to its row.
    points = re.findall(r"class='front-point' data-n='(\d\d)'", page)
    assert points == [f"{n:02d}" for n in range(len(front))]
    for n in range(len(front)):
        assert f"href='#front-{n:02d}'" in page and f"id='front-{n:02d}'" in page
        assert f"href='front/{n:02d}.onnx'" in page
    # Self-contained: no script, no stylesheet or image from the network.
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    # The front table links the plot.
    assert "[report.html](report.html)" in (searched / "front.md").read_text()


def test_help_does_not_import_optuna() -> None:
    code = (
        "import sys, contextlib, io\nfrom nnopt_graph.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n        main(['search', '--help'])\n    except SystemExit:\n        pass\n"
        "print('optuna' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip() == "False", proc.stderr


# --- the Pareto front on hand-made points (all objectives minimized) ---


def test_pareto_front_keeps_non_dominated_points() -> None:
    points = [(1.0, 0.5, 10.0), (2.0, 0.1, 10.0), (0.5, 0.9, 20.0), (3.0, 0.2, 5.0)]
    assert pareto_front(points) == [0, 1, 2, 3]


def test_pareto_front_drops_dominated_points() -> None:
    points = [(1.0, 0.1, 10.0), (1.0, 0.2, 10.0), (2.0, 0.2, 20.0), (0.9, 0.3, 10.0)]
    # 1 is worse than 0 on one objective and equal elsewhere; 2 is worse on all three.
    assert pareto_front(points) == [0, 3]


def test_pareto_front_keeps_equal_points_and_handles_empty() -> None:
    assert pareto_front([(1.0, 1.0, 1.0), (1.0, 1.0, 1.0)]) == [0, 1]
    assert pareto_front([]) == []
    assert pareto_front([(5.0, 5.0, 5.0)]) == [0]


def test_pareto_front_single_dominator() -> None:
    points = [(3.0, 3.0, 3.0), (1.0, 1.0, 1.0), (2.0, 1.0, 3.0)]
    assert pareto_front(points) == [1]


# --- the space ---


def test_default_space_cpu_contains_preset_and_all_combinations() -> None:
    from nnopt_graph.pipeline.registry import PRESETS

    space = load_space(None, "cpu")
    texts = [space.pipeline(c) for c in space.candidates()]
    assert space.size == 6 * 2 * 4 == len(set(texts))
    assert CPU_PRESET in texts
    # The cpu preset expands to the same passes as the candidate it is enqueued as.
    from nnopt_graph.pipeline.grammar import Pipeline

    assert str(Pipeline.parse(PRESETS["target-cpu"])) == str(Pipeline.parse(CPU_PRESET))
    int8 = CPU_PRESET.removeprefix("default,")
    assert f"default,prune-channels{{ratio=0.4}},sparsify{{pattern=2:4}},{int8}" in texts
    assert f"default,prune-channels{{ratio=0.5}},{int8}{{per-channel=false}}" in texts
    assert f"default,{int8}{{calibrator=entropy}}" in texts
    assert space.ordered == ("prune", "sparsify")


def test_default_space_cuda_has_fp16_int4_choices() -> None:
    space = default_space("cuda")
    texts = {space.pipeline(c) for c in space.candidates()}
    assert space.size == 6 * 2 * 4
    assert "default,quantize-fp16,quantize-int4" in texts
    assert not any("quantize-int8" in t for t in texts)


def test_space_file_round_trips(tmp_path: Path) -> None:
    space = default_space("tensorrt")
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space.to_json()))
    assert load_space(path, "cpu") == space


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"stages": []},
        {"stages": [{"name": "a"}]},
        {"stages": [{"name": "a", "choices": ["dedup"]}, {"name": "a", "choices": ["cse"]}]},
        {"stages": [{"name": "a", "choices": ["dedup"]}], "presets": [{"a": "cse"}]},
    ],
)
def test_bad_space_structure_is_refused(data: object, tmp_path: Path) -> None:
    from nnopt_graph.errors import BadInputError

    path = tmp_path / "space.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError):
        load_space(path, "cpu")
