"""prune-channels group-ratios: per-group ratios set by glob, the rest allocated as before."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from passes_util import ffn_chain, in_an_if, ort_run

from nnopt_graph.check.equality import LOSSLESS, array_problems
from nnopt_graph.errors import BadInputError
from nnopt_graph.passes.prune.allocate import total_weight_params
from nnopt_graph.passes.prune.channels import PruneChannelsPass
from nnopt_graph.passes.prune.group_ratios import (
    GroupRatio,
    match_group_ratios,
    parse_group_ratios,
    scale_group_ratios,
)
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import Pipeline
from nnopt_graph.runtime.data import Dataset

DIN, DOUT = 6, 4


def _mlp(widths=(32, 32), seed=0) -> onnx.ModelProto:
    return ffn_chain(seed, list(widths), din=DIN, dout=DOUT)


def _data(samples=32, seed=0) -> Dataset:
    x = np.random.default_rng(seed).standard_normal([samples, DIN]).astype(np.float32)
    return Dataset({"x": x}, "test")


def _prune(proto, **options):
    model = ir.serde.deserialize_model(proto)
    options.setdefault("protect_first", False)
    result = PruneChannelsPass(**options).run(model, PassContext(calibration=_data()))
    return model, result


def _widths(model: ir.Model | ir.Graph) -> dict[str, int]:
    graph = model.graph if isinstance(model, ir.Model) else model
    return {n.name: n.inputs[1].shape[1] for n in graph if n.op_type == "MatMul"}


def _entries(result) -> dict[str, dict]:
    return {d["group"]: d for d in result.decisions if "units_before" in d}


# ---------------------------------------------------------------- parsing


def test_parse_keeps_order_and_accepts_spaces_and_empty_items():
    assert parse_group_ratios(" *.attn.*=0.5, ,block1*=0 ") == [
        GroupRatio("*.attn.*", 0.5),
        GroupRatio("block1*", 0.0),
    ]
    assert parse_group_ratios("") == []


@pytest.mark.parametrize(
    "text, problem",
    [
        ("block0.fc", "not pattern=ratio"),
        ("=0.5", "not pattern=ratio"),
        ("block0*=half", "is not a number"),
        ("block0*=1", "outside [0, 1)"),
        ("block0*=-0.1", "outside [0, 1)"),
        ("block0*=nan", "outside [0, 1)"),
    ],
)
def test_parse_rejects_malformed_entries(text, problem):
    with pytest.raises(ValueError, match=problem.replace("[", r"\[").replace(")", r"\)")):
        parse_group_ratios(text)


def test_malformed_option_is_a_one_line_pipeline_error():
    with pytest.raises(BadInputError, match="group-ratios entry 'block0'"):
        Pipeline.parse('prune-channels{group-ratios="block0"}')


def test_first_matching_pattern_wins_and_unused_patterns_are_reported():
    entries = parse_group_ratios("block0*=0.5,block*=0.25,other*=0.1")
    matched, unused = match_group_ratios(entries, ["block0.fc", "block1.fc", "head"])
    assert {k: v.ratio for k, v in matched.items()} == {"block0.fc": 0.5, "block1.fc": 0.25}
    assert unused == ["other*"]


def test_scale_halves_every_ratio():
    assert scale_group_ratios("a*=0.5,b*=0.25", 0.5) == "a*=0.25,b*=0.125"
    assert scale_group_ratios("", 0.5) == ""


# ---------------------------------------------------------------- the pass


def test_a_matched_group_takes_its_ratio_and_the_others_the_uniform_one():
    pruned, result = _prune(_mlp(), ratio=0.25, group_ratios="block0*=0.5", protect_last=False)
    assert _widths(pruned) == {"block0.fc": 16, "block1.fc": 24, "head": DOUT}
    entries = _entries(result)
    assert entries["block0.fc"]["reason"] == "group-ratios: 'block0*'"
    assert entries["block1.fc"]["reason"] == "uniform ratio"


def test_with_search_the_other_groups_take_the_budget_left():
    proto = _mlp()
    total = total_weight_params(ir.serde.deserialize_model(proto))
    pruned, result = _prune(
        proto, ratio=0.25, search=True, group_ratios="block0*=0", protect_last=False
    )
    assert _widths(pruned)["block0.fc"] == 32
    removed = total - total_weight_params(pruned)
    # All of the budget now comes from block1 (within one of its units: 32 + 4 params).
    assert result.stats["params-budget"] == round(0.25 * total)
    assert abs(removed - 0.25 * total) <= 36
    assert _entries(result)["block1.fc"]["reason"] != "uniform ratio"


def test_with_search_a_fixed_group_over_the_budget_leaves_the_others_whole():
    # block0 at 0.5 removes 16 x (6 + 32) = 608 weights (+ 16 biases), over the 336 budget.
    pruned, result = _prune(
        _mlp(), ratio=0.25, search=True, group_ratios="block0*=0.5", protect_last=False
    )
    assert _widths(pruned) == {"block0.fc": 16, "block1.fc": 32, "head": DOUT}
    assert result.stats["params-removed"] == 608 + 16


def test_a_pattern_matching_no_group_changes_nothing_and_is_reported():
    plain, _ = _prune(_mlp(), ratio=0.25, protect_last=False)
    pruned, result = _prune(_mlp(), ratio=0.25, group_ratios="nothing*=0.5", protect_last=False)
    assert _widths(pruned) == _widths(plain)
    assert {"group_ratios_unmatched": "nothing*"} in result.decisions


def test_protection_wins_over_a_pattern():
    # block1 feeds only the last layer: protect-last keeps it whatever the pattern says.
    pruned, result = _prune(_mlp(), ratio=0.25, group_ratios="block1*=0.5")
    assert _widths(pruned)["block1.fc"] == 32
    assert _widths(pruned)["block0.fc"] == 24


def test_back_off_halves_the_group_ratios():
    pass_ = PruneChannelsPass(ratio=0.25, group_ratios="block0*=0.5")
    weaker = pass_.back_off()
    assert weaker is not None
    assert weaker.options.group_ratios == "block0*=0.25"
    assert weaker.options.ratio == 0.125


def test_zero_ratios_everywhere_leave_outputs_identical():
    proto = _mlp()
    pruned, result = _prune(proto, ratio=0.25, group_ratios="*=0", protect_last=False)
    assert result.stats["params-removed"] == 0
    after = ir.serde.serialize_model(pruned)
    feed = {"x": _data(8, seed=3).arrays["x"]}
    for ref, out in zip(ort_run(proto, feed), ort_run(after, feed), strict=True):
        assert array_problems("y", ref, out, LOSSLESS) == []


def test_second_run_at_the_reached_widths_changes_nothing():
    pruned, _ = _prune(_mlp(), ratio=0.25, group_ratios="block0*=0.5", protect_last=False)
    again = ir.serde.deserialize_model(ir.serde.serialize_model(pruned))
    result = PruneChannelsPass(ratio=0.25, group_ratios="*=0").run(
        again, PassContext(calibration=_data())
    )
    assert result.stats["params-removed"] == 0
    assert _widths(again) == _widths(pruned)


def test_a_pattern_sets_the_ratio_of_a_group_inside_an_if_branch():
    model = ir.serde.deserialize_model(in_an_if(_mlp()))
    result = PruneChannelsPass(ratio=0.25, group_ratios="block0*=0.5", protect_first=False).run(
        model, PassContext(calibration=None)
    )
    [branch] = [n for n in model.graph if n.op_type == "If"]
    inner = branch.attributes["then_branch"].as_graph()
    assert _widths(inner) == {"block0.fc": 16, "block1.fc": 24, "head": DOUT}
    assert _entries(result)["block0.fc"]["graph"] == "then"
