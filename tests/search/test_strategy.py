"""The strategies, the warm start, lossiness order and skipping candidates that cannot pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nnopt_graph.search.cache import CACHE_NAME, candidate_key, file_sha256
from nnopt_graph.search.run import run_search
from nnopt_graph.search.space import SearchSpace, default_space, load_space
from nnopt_graph.search.strategy import GridStrategy, OptunaStrategy, make_strategy, warm_start
from tests.search.digits import CALIB, HELDOUT, MODEL

GUARD = "cosine.min>=0.99"

P1, P2 = "prune-channels{ratio=0.1}", "prune-channels{ratio=0.2}"
SMALL = SearchSpace(
    "default",
    (
        ("prune", ("", P1, P2)),
        ("quantize", ("", "quantize-int8", "quantize-int8{per-channel=false}")),
    ),
    ((("prune", ""), ("quantize", "quantize-int8")), (("prune", ""), ("quantize", ""))),
    ("prune",),
)


def _c(prune: str, quant: str) -> dict[str, str]:
    return {"prune": prune, "quantize": quant}


# --- lossiness order and neighbours ---


def test_at_least_as_lossy_along_ordered_and_empty_choices() -> None:
    assert SMALL.at_least_as_lossy(_c(P2, ""), _c(P1, ""))
    assert SMALL.at_least_as_lossy(_c(P1, "quantize-int8"), _c(P1, ""))  # adds int8
    assert SMALL.at_least_as_lossy(_c(P1, ""), _c(P1, ""))
    assert SMALL.at_least_as_lossy(_c(P2, "quantize-int8"), _c("", "quantize-int8"))


def test_not_at_least_as_lossy() -> None:
    assert not SMALL.at_least_as_lossy(_c(P1, ""), _c(P2, ""))  # less pruning
    assert not SMALL.at_least_as_lossy(_c(P2, ""), _c(P1, "quantize-int8"))  # drops int8
    # Two int8 variants are not ordered: neither is assumed lossier.
    a, b = _c(P1, "quantize-int8"), _c(P1, "quantize-int8{per-channel=false}")
    assert not SMALL.at_least_as_lossy(a, b) and not SMALL.at_least_as_lossy(b, a)


def test_unordered_stage_choices_are_not_ordered_by_position() -> None:
    space = SearchSpace("default", (("prune", ("", P1, P2)),))  # no stage declared ordered
    assert not space.at_least_as_lossy({"prune": P2}, {"prune": P1})
    assert space.at_least_as_lossy({"prune": P1}, {"prune": ""})


def test_neighbours_step_one_stage_at_a_time() -> None:
    pt = "quantize-int8{per-channel=false}"
    assert SMALL.neighbours(_c("", "quantize-int8")) == [_c(P1, "quantize-int8"), _c("", pt)]
    assert SMALL.neighbours(_c("", "")) == [_c(P1, ""), _c("", "quantize-int8")]
    # The last prune ratio has no next one; an unordered stage's variants are one step away.
    assert SMALL.neighbours(_c(P2, pt)) == [_c(P2, "quantize-int8")]


def test_default_warm_start_is_presets_corner_middle_then_the_corner_variants() -> None:
    space = default_space("cpu")
    texts = [space.pipeline(c) for c in warm_start(space)]
    dyn = "merge-parallel-matmuls,fold-conv-affine,fuse-hardswish,quantize-dynamic-int8,"
    corner = "default,prune-channels{ratio=0.5},sparsify{pattern=2:4}"
    assert texts == [
        f"default,{dyn}quantize-int8",
        "default",
        # The corner: lossiest prune ratio and 2:4, with the preset's int8 variant.
        f"{corner},{dyn}quantize-int8",
        # The middle: prune 0.2 of 0-0.5, 2:4 off (the less lossy of its two), preset int8.
        f"default,prune-channels{{ratio=0.2}},{dyn}quantize-int8",
        # The corner's other int8 variants.
        f"{corner},{dyn}quantize-int8{{per-channel=false}}",
        f"{corner},{dyn}quantize-int8{{calibrator=entropy}}",
    ]


def test_middle_takes_the_middle_of_ordered_stages_and_the_lead_elsewhere() -> None:
    pt = "quantize-int8{per-channel=false}"
    assert SMALL.middle(_c("", pt)) == _c(P1, pt)
    assert SMALL.middle() == _c(P1, "")  # no lead: no choice in the unordered stage
    # An even number of choices: the less lossy of the two middle ones.
    four = SearchSpace("default", (("prune", ("", P1, P2, "p3")),), (), ("prune",))
    assert four.middle() == {"prune": P1}


def test_middle_moves_no_stage_the_space_does_not_declare_ordered() -> None:
    space = SearchSpace("default", (("prune", ("", P1, P2)),))  # nothing ordered
    assert space.middle() == {"prune": ""}
    assert space.middle({"prune": P2}) == {"prune": P2}


def test_most_lossy_is_the_corner_with_the_lead_choice_first() -> None:
    pt = "quantize-int8{per-channel=false}"
    assert SMALL.most_lossy(_c("", pt)) == [_c(P2, pt), _c(P2, "quantize-int8")]
    assert SMALL.most_lossy() == [_c(P2, "quantize-int8"), _c(P2, pt)]  # stage order
    # A lead with no choice in an unordered stage leaves that stage in stage order.
    assert SMALL.most_lossy(_c("", "")) == SMALL.most_lossy()
    # Nothing in the space is lossier than a corner candidate.
    for corner in SMALL.most_lossy():
        others = [c for c in SMALL.candidates() if c != corner]
        assert not any(SMALL.at_least_as_lossy(c, corner) for c in others)


def test_most_lossy_does_not_assume_an_order_the_space_does_not_declare() -> None:
    # prune not declared ordered: every non-empty ratio is a corner candidate, not only 0.2.
    space = SearchSpace("default", (("prune", ("", P1, P2)), ("q", ("",))))
    assert space.most_lossy() == [{"prune": P1, "q": ""}, {"prune": P2, "q": ""}]


def test_warm_start_without_presets_starts_at_the_corner_with_no_repeats() -> None:
    space = SearchSpace("default", (("prune", ("", P1, P2)),), (), ("prune",))
    assert warm_start(space) == [{"prune": P2}, {"prune": P1}]  # the corner, the middle
    # A preset already at the corner is not asked twice.
    at_corner = SearchSpace("default", (("prune", ("", P1)),), ((("prune", P1),),), ("prune",))
    assert warm_start(at_corner) == [{"prune": P1}, {"prune": ""}]
    warm = warm_start(SMALL)
    assert len(warm) == len({SMALL.pipeline(c) for c in warm})
    assert warm[:2] == SMALL.preset_choices()


def test_warm_start_asks_at_most_corner_limit_corner_candidates() -> None:
    from nnopt_graph.search.strategy import CORNER_LIMIT

    stages = tuple(
        (f"s{i}", ("", "quantize-int8", "quantize-int8{per-channel=false}")) for i in range(4)
    )
    space = SearchSpace("default", stages)
    assert len(space.most_lossy()) == 16 > CORNER_LIMIT
    corner = space.most_lossy()[:CORNER_LIMIT]
    assert warm_start(space) == corner[:1] + [space.middle()] + corner[1:]


def _corner_fake(choice: dict[str, str]) -> dict[str, Any]:
    # The default cpu space: every candidate feasible, more compression is faster.
    space = default_space("cpu")
    prune = [c for _, cs in space.stages if _ == "prune" for c in cs].index(choice["prune"])
    speed = 1.0 - 0.05 * prune - 0.1 * bool(choice["sparsify"]) - 0.2 * bool(choice["quantize"])
    return {
        "pipeline": space.pipeline(choice),
        "status": "ok",
        "guard_passed": True,
        "modelled": {"ratio": speed},
        "latency_ratio": {"min": speed, "median": speed, "max": speed},
        "worst": {"cosine": 0.999 - 0.001 * prune},
        "size": 100 - prune,
    }


def test_tpe_on_the_default_space_is_deterministic_for_a_seed() -> None:
    space = default_space("cpu")

    def asks(seed: int) -> list[str]:
        strategy = make_strategy(space, seed, "tpe")
        out = []
        for _ in range(14):
            trial, choice = strategy.ask()
            out.append(space.pipeline(choice))
            strategy.tell(trial, _corner_fake(choice))
        return out

    first = asks(1)
    assert first == asks(1)
    warm = [space.pipeline(c) for c in warm_start(space)]
    assert first[: len(warm)] == warm
    # The aggressive corner comes right after the two presets.
    assert first[2].startswith("default,prune-channels{ratio=0.5},sparsify{pattern=2:4},")


def test_space_file_ordered_round_trips_and_bad_ordered_is_refused(tmp_path: Path) -> None:
    from nnopt_graph.errors import BadInputError

    path = tmp_path / "space.json"
    path.write_text(json.dumps(SMALL.to_json()))
    assert load_space(path, "cpu") == SMALL
    data = SMALL.to_json()
    data["ordered"] = ["no-such-stage"]
    path.write_text(json.dumps(data))
    with pytest.raises(BadInputError, match="ordered"):
        load_space(path, "cpu")


# --- the strategies ---


def _fake(choice: dict[str, str]) -> dict[str, Any]:
    # A made-up, deterministic landscape: more pruning is faster, int8 faster still.
    speed = 1.0 - 0.2 * ("", P1, P2).index(choice["prune"]) - 0.1 * bool(choice["quantize"])
    return {
        "pipeline": SMALL.pipeline(choice),
        "status": "ok",
        "guard_passed": choice["prune"] != P2,
        "modelled": {"ratio": speed},
        "latency_ratio": {"min": speed, "median": speed, "max": speed},
        "worst": {"cosine": 0.999},
        "size": 100,
    }


def _asks(kind: str, seed: int, n: int) -> list[str]:
    strategy = make_strategy(SMALL, seed, kind)
    out = []
    for _ in range(n):
        trial, choice = strategy.ask()
        out.append(SMALL.pipeline(choice))
        strategy.tell(trial, _fake(choice))
    return out


@pytest.mark.parametrize("kind", ["tpe", "nsga2"])
def test_optuna_strategies_start_with_the_warm_start_and_are_seeded(kind: str) -> None:
    first = _asks(kind, 0, 8)
    warm = [SMALL.pipeline(c) for c in warm_start(SMALL)]
    assert first[: len(warm)] == warm
    assert _asks(kind, 0, 8) == first  # deterministic for a seed and the same results


def test_random_strategy_has_no_warm_start_and_is_seeded() -> None:
    assert _asks("random", 3, 6) == _asks("random", 3, 6)
    strategy = OptunaStrategy(SMALL, 0, "random")
    assert len(strategy.study.trials) == 0  # nothing enqueued


def test_grid_strategy_asks_every_candidate_in_order() -> None:
    strategy = GridStrategy(SMALL)
    asked = [SMALL.pipeline(strategy.ask()[1]) for _ in range(SMALL.size)]
    assert asked == [SMALL.pipeline(c) for c in SMALL.candidates()]


def test_unknown_strategy_is_refused(tmp_path: Path) -> None:
    from nnopt_graph.errors import BadInputError

    with pytest.raises(BadInputError, match="unknown strategy"):
        run_search(MODEL, tmp_path / "o", target="cpu", calib=CALIB, strategy="bayes")
    assert not (tmp_path / "o").exists()


# --- skipping candidates at least as lossy as one that failed the guard ---


def test_candidates_lossier_than_an_infeasible_one_are_not_evaluated(tmp_path: Path) -> None:
    space_path = tmp_path / "space.json"
    space = SearchSpace(
        "default",
        (("prune", ("", P1, P2)), ("quantize", ("", "quantize-int8"))),
        ((("prune", ""), ("quantize", "quantize-int8")),),
        ("prune",),
    )
    space_path.write_text(json.dumps(space.to_json()))
    out = tmp_path / "out"
    out.mkdir()
    sha, data = file_sha256(MODEL), [file_sha256(CALIB), file_sha256(HELDOUT)]
    cached = {
        "default": True,
        "default,quantize-int8": True,
        f"default,{P1}": False,  # failed the guard
        f"default,{P1},quantize-int8": False,
    }
    lines = []
    for text, ok in cached.items():
        rec = _fake({"prune": "", "quantize": ""}) | {"pipeline": text, "guard_passed": ok}
        rec |= {"model": str(MODEL), "key": candidate_key(sha, text, data, "cpu", GUARD)}
        lines.append(json.dumps(rec))
    (out / CACHE_NAME).write_text("\n".join(lines) + "\n")
    result = run_search(
        MODEL,
        out,
        target="cpu",
        calib=CALIB,
        eval_data=HELDOUT,
        guard=GUARD,
        trials=6,
        space=space_path,
        strategy="grid",
        confirm=0,
    )[0]
    # prune 0.2 (with or without int8) is at least as lossy as prune 0.1, which failed.
    assert result.evaluated == 0
    skipped = {r["pipeline"]: r for r in result.records if r["status"] == "skipped"}
    assert set(skipped) == {f"default,{P2}", f"default,{P2},quantize-int8"}
    assert "failed the guard" in skipped[f"default,{P2}"]["reason"]
    summary = json.loads((out / "front.json").read_text())
    assert summary["skipped"] == 2 and summary["strategy"] == "grid"
    # A skipped candidate is never on the front nor best.
    assert all(e["pipeline"] not in skipped for e in summary["front"])


def test_a_corner_that_fails_the_guard_is_told_as_infeasible_not_failed() -> None:
    # SMALL's fake landscape: prune 0.2 (the corner's ratio) fails the guard.
    strategy = make_strategy(SMALL, 0, "tpe")
    warm = warm_start(SMALL)
    for _ in warm:
        trial, choice = strategy.ask()
        strategy.tell(trial, _fake(choice))
    corner = [t for t in strategy.study.trials if SMALL.stages[0][1][t.params["prune"]] == P2]
    assert len(corner) == 2
    # Told with its values and a violated constraint: the sampler learns where the guard breaks.
    assert all(t.state.name == "COMPLETE" and t.user_attrs["violation"] == 1.0 for t in corner)
    others = [t for t in strategy.study.trials if t not in corner]
    assert all(t.user_attrs["violation"] == 0.0 for t in others)
