"""The confirmation stage: best.onnx comes from one re-timed run, with an injected timer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import onnx
import pytest

from nnopt_graph.errors import CheckFailedError
from nnopt_graph.search.cache import CACHE_NAME, CandidateCache, candidate_key, file_sha256
from nnopt_graph.search.confirm import confirm_best, shortlist
from nnopt_graph.search.run import run_search
from tests.search.digits import CALIB, HELDOUT, MODEL

GUARD = "cosine.min>=0.99"
PRESET = "default,quantize-int8"


@dataclasses.dataclass
class _Timing:
    ratio: list[dict[str, float]]
    runs: int


class FakeTimer:
    """Answers every model's per-window ratio from a table (by path), the first path = 1."""

    def __init__(self, speed: dict[str, float], input_speed: float = 2.0) -> None:
        self.speed = speed
        self.input_speed = input_speed
        self.calls: list[list[str]] = []

    def __call__(self, paths: list[str], feed: Any) -> _Timing:
        self.calls.append(list(paths))
        times = [self.speed.get(p, self.input_speed) for p in paths]
        ratio = [{"min": t / times[0], "median": t / times[0], "max": t / times[0]} for t in times]
        return _Timing(ratio, 25)


def _never(paths: list[str], feed: Any) -> _Timing:
    raise AssertionError("nothing should have been re-timed")


def _record(
    name: str,
    first: float,
    *,
    feasible: bool = True,
    size: int = 100,
    modelled: float | None = None,
) -> dict[str, Any]:
    # first: the candidate's own measured figure; modelled: what the front ranks by.
    return {
        "pipeline": name,
        "status": "ok",
        "guard_passed": feasible,
        "modelled": {"ratio": first if modelled is None else modelled},
        "latency_ratio": {"min": first, "median": first, "max": first},
        "worst": {"cosine": 0.995},
        "size": size,
        "model": f"/models/{name}.onnx",
    }


# --- confirm_best on hand-made records ---


def test_confirmation_overrides_a_wrong_first_measurement() -> None:
    a, b, preset = _record("a", 0.5), _record("b", 0.9), _record(PRESET, 1.0)
    # a looked fastest when timed alone; timed together, b is, and a is slower than the preset.
    timer = FakeTimer({a["model"]: 1.3, b["model"]: 0.8, preset["model"]: 1.0})
    c = confirm_best([a, b, preset], preset, 3, "/models/input.onnx", {}, timer)
    assert c is not None
    assert c.best is b
    assert c.reference == PRESET
    # preset, the preset again (A-vs-A), then the shortlist by the search's figure, the input.
    assert timer.calls == [
        [preset["model"], preset["model"], a["model"], b["model"], "/models/input.onnx"]
    ]
    assert [e["pipeline"] for e in c.entries] == ["b", PRESET, "a"]
    assert c.entries[0]["ratio"]["median"] == pytest.approx(0.8)
    assert c.entries[0]["vs_input"] == pytest.approx(0.8 / 2.0)
    assert c.entries[0]["first_ratio"] == 0.9
    assert c.noise == {"min": 1.0, "median": 1.0, "max": 1.0}
    assert c.windows == 25


def test_preset_kept_when_every_candidate_retimes_slower() -> None:
    a, preset = _record("a", 0.5), _record(PRESET, 1.0)
    timer = FakeTimer({a["model"]: 1.05, preset["model"]: 1.0})
    c = confirm_best([a], preset, 3, "/in.onnx", {}, timer)
    assert c is not None and c.best is preset
    assert [e["role"] for e in c.entries] == ["preset", "candidate"]


def test_a_tie_goes_to_the_preset() -> None:
    a, preset = _record("a", 0.5), _record(PRESET, 1.0)
    c = confirm_best([a], preset, 3, "/in.onnx", {}, FakeTimer({a["model"]: 1.0}, 1.0))
    assert c is not None and c.best is preset


def test_a_candidate_must_beat_the_presets_own_noise() -> None:
    a, preset = _record("a", 0.5), _record(PRESET, 1.0)

    class CopyFaster(FakeTimer):
        def __call__(self, paths: list[str], feed: Any) -> _Timing:
            timing = super().__call__(paths, feed)
            timing.ratio[1] = {"min": 0.9, "median": 0.9, "max": 0.9}  # the preset's copy
            return timing

    # 0.95 beats the preset's first session (1.0) but not its copy (0.9): within the noise.
    c = confirm_best(
        [a], preset, 3, "/in.onnx", {}, CopyFaster({a["model"]: 0.95, preset["model"]: 1.0})
    )
    assert c is not None and c.best is preset
    assert c.noise is not None and c.noise["median"] == 0.9
    # 0.85 beats both: the candidate.
    c = confirm_best(
        [a], preset, 3, "/in.onnx", {}, CopyFaster({a["model"]: 0.85, preset["model"]: 1.0})
    )
    assert c is not None and c.best is a


def test_nothing_meets_the_guard_gives_no_best() -> None:
    a, preset = _record("a", 0.5, feasible=False), _record(PRESET, 1.0, feasible=False)
    assert confirm_best([a], preset, 3, "/in.onnx", {}, _never) is None
    assert confirm_best([], None, 3, "/in.onnx", {}, _never) is None


def test_only_the_preset_feasible_is_best_without_a_timed_run() -> None:
    a, preset = _record("a", 0.2, feasible=False), _record(PRESET, 1.0)
    c = confirm_best([a], preset, 3, "/in.onnx", {}, _never)
    assert c is not None and c.best is preset and c.windows == 0 and c.noise is None


def test_infeasible_preset_is_not_a_reference_nor_eligible() -> None:
    a, b = _record("a", 0.6), _record("b", 0.7)
    preset = _record(PRESET, 0.1, feasible=False)
    timer = FakeTimer({a["model"]: 1.0, b["model"]: 0.9, preset["model"]: 0.01})
    c = confirm_best([a, b], preset, 3, "/in.onnx", {}, timer)
    assert c is not None and c.best is b
    assert c.reference == "a"
    assert preset["model"] not in timer.calls[0]
    assert all(e["role"] == "candidate" for e in c.entries)


def test_shortlist_takes_the_k_fastest_by_the_modelled_latency() -> None:
    # Measured figures say c, d fastest; the model says a, b: the model ranks the front.
    front = [
        _record(n, first, modelled=m)
        for n, first, m in (("c", 0.3, 0.7), ("a", 0.9, 0.5), ("d", 0.4, 0.8), ("b", 0.9, 0.6))
    ]
    preset = _record(PRESET, 1.0)
    assert [r["pipeline"] for r in shortlist(front, preset, 2)] == [PRESET, "a", "b"]
    # The preset on the front is not counted twice.
    assert [r["pipeline"] for r in shortlist([*front, preset], preset, 1)] == [PRESET, "a"]
    assert [r["pipeline"] for r in shortlist(front, None, 0)] == []
    # Equal modelled figures: the smaller model, then the pipeline text, decides.
    tie = [_record("y", 0.5, size=200), _record("x", 0.5, size=200), _record("z", 0.5, size=100)]
    assert [r["pipeline"] for r in shortlist(tie, None, 3)] == ["z", "x", "y"]


def test_shortlist_adds_the_measured_pick_when_the_model_left_it_out() -> None:
    front = [_record(n, first, modelled=m) for n, first, m in (("a", 0.9, 0.5), ("b", 0.8, 0.6))]
    fast = _record("fast", 0.3, modelled=0.9)  # the model's worst, measured the fastest
    preset = _record(PRESET, 1.0)
    names = [r["pipeline"] for r in shortlist(front, preset, 1, fast)]
    assert names == [PRESET, "a", "fast"]
    # Not twice when it is already there; never with k = 0 or when it failed the guard.
    assert [r["pipeline"] for r in shortlist(front, preset, 2, front[1])] == [PRESET, "a", "b"]
    assert [r["pipeline"] for r in shortlist(front, preset, 0, fast)] == [PRESET]
    bad = _record("bad", 0.1, feasible=False)
    assert [r["pipeline"] for r in shortlist(front, preset, 1, bad)] == [PRESET, "a"]


def test_the_measured_pick_can_win_the_confirmation() -> None:
    a, fast = _record("a", 0.9, modelled=0.5), _record("fast", 0.3, modelled=0.9)
    preset = _record(PRESET, 1.0)
    timer = FakeTimer({a["model"]: 0.95, fast["model"]: 0.7, preset["model"]: 1.0})
    c = confirm_best([a], preset, 1, "/in.onnx", {}, timer, measured=fast)
    assert c is not None and c.best is fast
    assert timer.calls[0] == [
        preset["model"],
        preset["model"],
        a["model"],
        fast["model"],
        "/in.onnx",
    ]
    assert {e["pipeline"]: e["modelled"] for e in c.entries} == {PRESET: 1.0, "a": 0.5, "fast": 0.9}


# --- through run_search, on a hand-made cache (no candidate is built) ---

_SPACE = {
    "base": "default",
    "stages": [
        {"name": "prune", "choices": ["", "prune-channels{ratio=0.1}"]},
        {"name": "quantize", "choices": ["", "quantize-int8"]},
    ],
    "presets": [{"prune": "", "quantize": "quantize-int8"}, {"prune": "", "quantize": ""}],
}


def _outdir(
    tmp_path: Path,
    first: dict[str, float],
    feasible: set[str] | None = None,
    modelled: dict[str, float] | None = None,
) -> tuple[Path, Path, dict[str, str]]:
    """OUTDIR with a cache holding every candidate of _SPACE; each has its own model bytes."""
    space = tmp_path / "space.json"
    space.write_text(json.dumps(_SPACE))
    out = tmp_path / "out"
    (out / "models").mkdir(parents=True)
    sha = file_sha256(MODEL)
    data = [file_sha256(CALIB), file_sha256(HELDOUT)]
    paths = {}
    lines = []
    for n, (text, ratio) in enumerate(first.items()):
        model = onnx.load(str(MODEL))
        model.doc_string = text
        # One folder per candidate, as the search writes them (a lone file is copied as is).
        (out / "models" / str(n)).mkdir()
        path = out / "models" / str(n) / "model.onnx"
        onnx.save(model, str(path))
        paths[text] = str(path)
        rec = _record(
            text,
            ratio,
            feasible=feasible is None or text in feasible,
            size=100 + n,
            modelled=None if modelled is None else modelled[text],
        )
        if text == "default":
            rec["worst"] = {"cosine": 1.0}  # lossless: on the front despite its figure
        rec["model"] = str(path)
        rec["key"] = candidate_key(sha, text, data, "cpu", GUARD)
        lines.append(json.dumps(rec))
    (out / CACHE_NAME).write_text("\n".join(lines) + "\n")
    return out, space, paths


FIRST = {
    "default,quantize-int8": 1.0,
    "default": 1.1,
    "default,prune-channels{ratio=0.1}": 1.2,
    "default,prune-channels{ratio=0.1},quantize-int8": 0.6,
}


def _search(out: Path, space: Path, **kwargs: Any) -> Any:
    return run_search(
        MODEL,
        out,
        target="cpu",
        calib=CALIB,
        eval_data=HELDOUT,
        guard=GUARD,
        trials=4,
        space=space,
        **kwargs,
    )[0]


def test_run_search_picks_best_from_the_confirmation(tmp_path: Path) -> None:
    out, space, paths = _outdir(tmp_path, FIRST)
    # The search's figures say prune 0.1 + int8 (0.6); re-timed, it is slower than the
    # preset, and the lossless default is the fastest.
    timer = FakeTimer(
        {
            paths["default,quantize-int8"]: 1.0,
            paths["default"]: 0.9,
            paths["default,prune-channels{ratio=0.1},quantize-int8"]: 1.1,
        }
    )
    result = _search(out, space, confirm=3, confirm_timer=timer)
    assert result.evaluated == 0
    assert (out / "best.pipeline.txt").read_text().strip() == "default"
    assert (out / "best.onnx").read_bytes() == Path(paths["default"]).read_bytes()
    summary = json.loads((out / "front.json").read_text())
    assert summary["best"]["pipeline"] == "default"
    conf = summary["confirmation"]
    assert conf["reference"] == "default,quantize-int8" and conf["windows"] == 25
    assert conf["entries"][0]["pipeline"] == "default"
    assert "## Confirmation" in (out / "front.md").read_text()
    assert "Confirmation" in (out / "report.html").read_text()


def test_without_confirmation_the_modelled_latency_decides(tmp_path: Path) -> None:
    # Measured alone, prune 0.1 + int8 looks fastest (0.6); the model says the preset.
    modelled = {
        "default,quantize-int8": 0.5,
        "default": 1.0,
        "default,prune-channels{ratio=0.1}": 0.9,
        "default,prune-channels{ratio=0.1},quantize-int8": 0.55,
    }
    out, space, _ = _outdir(tmp_path, FIRST, modelled=modelled)
    _search(out, space, confirm=0, confirm_timer=_never)
    assert (out / "best.pipeline.txt").read_text().strip() == "default,quantize-int8"
    summary = json.loads((out / "front.json").read_text())
    assert summary["confirmation"] is None
    # The front is ranked by the model too, and front.md shows both figures.
    assert summary["front"][0]["pipeline"] == "default,quantize-int8"
    assert summary["front"][0]["modelled"]["ratio"] == 0.5
    assert "| 00 | 0.500 | 1.000 [1.000, 1.000] |" in (out / "front.md").read_text()


def test_a_cached_record_without_the_modelled_figure_is_evaluated_again(tmp_path: Path) -> None:
    out, space, _ = _outdir(tmp_path, FIRST)
    cache = CandidateCache(out)
    key = next(iter(cache.entries))
    assert cache.get(key) is not None
    del cache.entries[key]["modelled"]
    assert cache.get(key) is None
    # A failed record never had one and stays an answer.
    cache.entries[key]["status"] = "failed"
    assert cache.get(key) is not None


def test_run_search_only_preset_feasible(tmp_path: Path) -> None:
    out, space, paths = _outdir(tmp_path, FIRST, feasible={"default,quantize-int8"})
    result = _search(out, space, confirm=3, confirm_timer=_never)
    assert result.best is not None and result.best["pipeline"] == "default,quantize-int8"
    assert (out / "best.onnx").read_bytes() == Path(paths["default,quantize-int8"]).read_bytes()


def test_run_search_nothing_feasible_writes_no_best(tmp_path: Path) -> None:
    out, space, _ = _outdir(tmp_path, FIRST, feasible=set())
    # A best.onnx left by an earlier run must not survive either.
    (out / "best.onnx").write_bytes(b"stale")
    (out / "best.pipeline.txt").write_text("stale\n")
    # Batch 2: the preset and the lossless default are over the guard, so the other two,
    # at least as lossy as the default, are skipped, not built.
    with pytest.raises(
        CheckFailedError,
        match=r"no candidate met the guard.*4 candidates: 2 over the guard, 2 skipped as at "
        r"least as lossy as one over it, 0 failed to build",
    ):
        _search(out, space, confirm=3, confirm_timer=_never)
    assert not (out / "best.onnx").exists() and not (out / "best.pipeline.txt").exists()
    assert json.loads((out / "front.json").read_text())["best"] is None


def test_negative_confirm_is_refused(tmp_path: Path) -> None:
    from nnopt_graph.errors import BadInputError

    out, space, _ = _outdir(tmp_path, FIRST)
    with pytest.raises(BadInputError, match="--confirm"):
        _search(out, space, confirm=-1)
