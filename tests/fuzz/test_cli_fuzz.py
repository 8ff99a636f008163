"""CLI fuzz: hostile pipeline text, options, data files and paths keep the exit contract.

Every outcome is exit 0, or exit 1/2 with one ``nnopt-graph: error: ...`` line (exit 2:
the only stderr line), no traceback, no internal error, and nothing left in the output
folder. Runs the same ``main()`` the command runs, in this process.
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import make_tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnopt_graph.cli import main

PREFIX = "nnopt-graph: error: "
SMALL, LARGE = 60, 600
OUTCOMES: collections.Counter[int] = collections.Counter()

_BASES = (
    "dedup,cse",
    "eliminate-no-ops,fold-constants{max-rounds=2}",
    "default",
    "prune-channels{ratio=0.5 round-to=2}",
    "sparsify{pattern=2:4}",
    "cluster-weights{bits=4 min-elements=16}",
    "store-sparse{threshold=0.5}",
)
_ALPHABET = "abcdefghijklmnopqrstuvwxyz-{}=,.:\"' 0123456789+eE\\/\t\n"


@st.composite
def _pipeline_text(draw: st.DrawFn) -> str:
    """A valid pipeline, mutated a few times (insert, delete, replace a character)."""
    text = draw(st.sampled_from(_BASES))
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        char = draw(st.sampled_from(_ALPHABET))
        if op == "insert":
            text = text[:pos] + char + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + 1 :]
        else:
            text = text[:pos] + char + text[pos + 1 :]
    return text


_NUMBERS = st.sampled_from(
    ["0", "1", "-1", "1.5", "0.3", "nan", "inf", "-inf", "1e308", "2", "9", "1e-300", "x", ""]
)


@st.composite
def _option_text(draw: st.DrawFn) -> str:
    name, keys = draw(
        st.sampled_from(
            [
                ("prune-channels", ["ratio", "round-to", "max-layer-ratio", "min-ratio"]),
                ("cluster-weights", ["bits", "block-size", "min-elements"]),
                ("sparsify", ["ratio", "damp", "block-size", "keep-dense"]),
                ("fold-constants", ["max-rounds", "max-input-elements"]),
                ("quantize-int8", ["percentile", "smooth-quant", "bins"]),
            ]
        )
    )
    chosen = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=2, unique=True))
    return name + "{" + " ".join(f"{k}={draw(_NUMBERS)}" for k in chosen) + "}"


@st.composite
def _data_array(draw: st.DrawFn) -> np.ndarray:
    """Calibration data for ``x`` [N, 3, 8, 8]: right, or wrong in one way."""
    kind = draw(
        st.sampled_from(
            ["ok", "shape", "rank", "empty", "nan", "inf", "string", "complex", "int64", "f64"]
        )
    )
    n = draw(st.integers(1, 4))
    base = np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32)
    if kind == "shape":
        return np.zeros((n, 3, 7, 8), np.float32)
    if kind == "rank":
        return np.zeros((n, 3), np.float32)
    if kind == "empty":
        return np.zeros((0, 3, 8, 8), np.float32)
    if kind in ("nan", "inf"):
        base[n - 1, 0, 0, 0] = np.nan if kind == "nan" else np.inf
        return base
    if kind == "string":
        return np.full((n, 3, 8, 8), "a")
    if kind == "complex":
        return base.astype(np.complex64)
    if kind == "int64":
        return base.astype(np.int64)
    if kind == "f64":
        return base.astype(np.float64)
    return base


def _check_outcome(code: int, err: str, out_dir: Path, args: list[str]) -> None:
    assert code in (0, 1, 2), (code, args, err)
    assert "Traceback" not in err, (args, err)
    if code == 0:
        return
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(PREFIX)]
    assert len(errors) == 1 and lines[-1] == errors[0], (args, err)
    assert "internal error" not in errors[0], (args, err)
    if code == 2:
        assert len(lines) == 1, ("bad input must be the only line", args, err)
    left = sorted(p.name for p in out_dir.iterdir())
    assert left == [], ("nothing written on failure", args, left)


def _run(capsys: pytest.CaptureFixture[str], args: list[str], out_dir: Path) -> int:
    capsys.readouterr()
    code = main(args)
    OUTCOMES[code] += 1
    err = capsys.readouterr().err
    _check_outcome(code, err, out_dir, args)
    return code


_SETTINGS = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@st.composite
def _job(draw: st.DrawFn) -> dict:
    return {
        "pipeline": draw(st.one_of(_pipeline_text(), _option_text(), st.none())),
        "data": draw(st.one_of(st.none(), _data_array())),
        "data_flag": draw(st.sampled_from(["--calib", "--eval"])),
        "out": draw(
            st.sampled_from(["ok", "input", "data", "dir", "missing-folder", "report-dir"])
        ),
        "extra": draw(st.sampled_from([[], ["--no-check"], ["--verify-each"], ["--stats"]])),
    }


def _fuzz_once(capsys: pytest.CaptureFixture[str], job: dict) -> int:
    with tempfile.TemporaryDirectory(prefix="nnopt-cli-fuzz-") as tmp:
        folder = Path(tmp)
        src = folder / "in" / "m.onnx"
        src.parent.mkdir()
        onnx.save(make_tiny_model(), src)
        before = src.read_bytes()
        out_dir = folder / "out"
        out_dir.mkdir()
        args = ["opt", str(src)]
        data_path = folder / "in" / "data.npz"
        if job["data"] is not None:
            np.savez(data_path, x=job["data"])
        out = {
            "ok": out_dir / "o.onnx",
            "input": src,
            "data": data_path,
            "dir": out_dir,
            "missing-folder": out_dir / "nosuch" / "o.onnx",
            "report-dir": out_dir / "o.onnx",
        }[job["out"]]
        args.append(str(out))
        if job["pipeline"] is not None:
            args += ["-p", job["pipeline"]]
        if job["data"] is not None:
            args += [job["data_flag"], str(data_path)]
        if job["out"] == "report-dir":
            args += ["--report", str(out_dir)]
        args += job["extra"]
        code = _run(capsys, args, out_dir)
        assert src.read_bytes() == before, ("the input must never change", args)
        bad_paths = {"input", "dir", "missing-folder", "report-dir"}
        if job["data"] is not None:
            bad_paths.add("data")  # OUT would overwrite the data file
        if job["out"] in bad_paths:
            assert code == 2, (args, code)
        return code


@settings(max_examples=SMALL, **_SETTINGS)
@given(_job())
def test_cli_fuzz_keeps_the_exit_contract(capsys: pytest.CaptureFixture[str], job: dict) -> None:
    _fuzz_once(capsys, job)


@pytest.mark.slow
@settings(max_examples=LARGE, **_SETTINGS)
@given(_job())
def test_cli_fuzz_keeps_the_exit_contract_large(
    capsys: pytest.CaptureFixture[str], job: dict
) -> None:
    _fuzz_once(capsys, job)


@settings(max_examples=40, **_SETTINGS)
@given(st.one_of(_pipeline_text(), _option_text()))
def test_pipeline_text_errors_are_one_line_exit_2(capsys, text: str) -> None:
    """A pipeline that does not parse fails before any work: exit 2, the only line."""
    from nnopt_graph.errors import BadInputError
    from nnopt_graph.pipeline.grammar import Pipeline

    try:
        Pipeline.parse(text)
    except BadInputError:
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = Path(tmp)
            src = out_dir.parent / f"{out_dir.name}.onnx"
            onnx.save(make_tiny_model(), src)
            try:
                code = _run(capsys, ["opt", str(src), str(out_dir / "o.onnx"), "-p", text], out_dir)
            finally:
                src.unlink()
        assert code == 2


def test_fuzz_checker_catches_a_broken_contract(tmp_path: Path) -> None:
    # Negative control: the outcome check itself rejects what the contract forbids.
    for code, err in [
        (1, "Traceback (most recent call last):\n" + PREFIX + "boom\n"),
        (2, "nnopt-graph: WARNING: something\n" + PREFIX + "bad\n"),
        (1, PREFIX + "internal error: KeyError: 'x'\n"),
        (139, ""),
    ]:
        with pytest.raises(AssertionError):
            _check_outcome(code, err, tmp_path, [])
    (tmp_path / "left.onnx").write_bytes(b"x")
    with pytest.raises(AssertionError):
        _check_outcome(2, PREFIX + "bad\n", tmp_path, [])


@pytest.fixture(autouse=True, scope="module")
def _report_counts():
    """With NNOPT_FUZZ_REPORT=1 (and -s), print how many cases ran."""
    yield
    if os.environ.get("NNOPT_FUZZ_REPORT"):
        print(f"\n{__name__}: {dict(OUTCOMES)}")
