"""prune-channels round-to: every tensor axis keeps a multiple of it, Concat segments included."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from passes_util import ort_run, random_feeds, run_pass, to_proto

from nnopt_graph.passes.prune.select import _aligned_count


def _concat_model(width: int = 24, seed: int = 0) -> onnx.ModelProto:
    """Two Convs of ``width`` outputs, concatenated, then a Conv reading the concat."""
    rng = np.random.default_rng(seed)

    def weight(name: str, shape: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [
        weight("wa", [width, 8, 3, 3]),
        weight("wb", [width, 8, 3, 3]),
        weight("wc", [16, 2 * width, 1, 1]),
        weight("wd", [4, 16, 1, 1]),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node("Concat", ["ra", "rb"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["c"], name="conv_c"),
        helper.make_node("Relu", ["c"], ["rc"]),
        helper.make_node("Conv", ["rc", "wd"], ["y"], name="conv_d"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv_widths(model) -> dict[str, tuple[int, int]]:
    """Per Conv: (output channels, input channels) of its weight."""
    proto = to_proto(model)
    inits = {i.name: i for i in proto.graph.initializer}
    return {
        n.name: tuple(inits[n.input[1]].dims[:2]) for n in proto.graph.node if n.op_type == "Conv"
    }


def test_round_to_aligns_each_concat_segment():
    model, result = run_pass(
        _concat_model(), "prune-channels", ratio=0.3, round_to=8, protect_first=False
    )
    widths = _conv_widths(model)
    assert result.modified
    assert widths["conv_a"][0] % 8 == 0 and widths["conv_b"][0] % 8 == 0
    assert widths["conv_c"][1] == widths["conv_a"][0] + widths["conv_b"][0]
    assert widths["conv_a"][0] < 24 or widths["conv_b"][0] < 24


def test_without_round_to_segments_take_any_width():
    """Negative: the group-level count alone leaves the segments unaligned (the bug)."""
    model, _ = run_pass(_concat_model(), "prune-channels", ratio=0.3, protect_first=False)
    widths = _conv_widths(model)
    assert widths["conv_a"][0] % 8 != 0 or widths["conv_b"][0] % 8 != 0


def test_round_to_at_ratio_zero_changes_nothing():
    """Negative: nothing to remove, so the outputs stay bit-identical."""
    proto = _concat_model(seed=1)
    model, result = run_pass(proto, "prune-channels", ratio=0.0, round_to=8)
    assert not result.modified
    feeds = random_feeds(proto)
    for a, b in zip(ort_run(proto, feeds), ort_run(to_proto(model), feeds), strict=True):
        assert np.array_equal(a, b)


def test_aligned_prune_is_idempotent_on_its_widths():
    """Pruning the aligned output again at ratio 0 keeps every width."""
    first, _ = run_pass(
        _concat_model(seed=3), "prune-channels", ratio=0.3, round_to=8, protect_first=False
    )
    again, result = run_pass(to_proto(first), "prune-channels", ratio=0.0, round_to=8)
    assert not result.modified and _conv_widths(again) == _conv_widths(first)


def test_aligned_prune_output_runs_under_ort():
    proto = _concat_model(seed=2)
    model, _ = run_pass(proto, "prune-channels", ratio=0.3, round_to=8, protect_first=False)
    import onnxruntime as ort

    session = ort.InferenceSession(
        to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (out,) = session.run(None, random_feeds(proto))
    assert out.shape == (1, 4, 6, 6) and np.isfinite(out).all()


def test_aligned_count_nearest_multiple():
    assert _aligned_count(17, 24, 8, 1) == 16
    assert _aligned_count(21, 24, 8, 1) == 24
    assert _aligned_count(63, 64, 16, 1) == 64


def test_aligned_count_untouched_class_stays_whole():
    """Negative: a class not pruned keeps its input width even when it is unaligned."""
    assert _aligned_count(82, 82, 16, 1) == 82


def test_aligned_count_class_smaller_than_step_keeps_its_count():
    """Negative: no multiple fits, so the selection is left as chosen."""
    assert _aligned_count(5, 6, 8, 1) == 5


def test_aligned_count_respects_the_floor():
    """Negative: frozen units or the layer cap forbid going below ``lowest``."""
    assert _aligned_count(9, 32, 8, 17) == 24


def test_default_round_to_aligns_groups_of_64_channels_to_16():
    """round-to=0 (the default, auto): a 2 x 48 Concat group keeps multiples of 16."""
    model, result = run_pass(
        _concat_model(width=48), "prune-channels", ratio=0.3, protect_first=False
    )
    widths = _conv_widths(model)
    assert result.modified
    assert widths["conv_a"][0] % 16 == 0 and widths["conv_b"][0] % 16 == 0
    assert widths["conv_c"][1] == widths["conv_a"][0] + widths["conv_b"][0] < 96


def test_default_round_to_leaves_small_groups_unaligned():
    """Negative: under 64 channels a step of 16 would decide most of the ratio; none is applied."""
    model, _ = run_pass(_concat_model(width=24), "prune-channels", ratio=0.3, protect_first=False)
    widths = _conv_widths(model)
    assert widths["conv_a"][0] % 8 != 0 or widths["conv_b"][0] % 8 != 0


def test_round_to_one_turns_the_alignment_off():
    """Negative: an explicit round-to=1 keeps the unaligned selection on a 96-channel group."""
    model, _ = run_pass(
        _concat_model(width=48), "prune-channels", ratio=0.3, round_to=1, protect_first=False
    )
    widths = _conv_widths(model)
    assert widths["conv_a"][0] % 16 != 0 or widths["conv_b"][0] % 16 != 0


def test_round_step_is_auto_only_for_wide_single_channel_groups():
    from nnopt_graph.analysis.channels import analyze_channels
    from nnopt_graph.passes.prune.select import AUTO_STEP, round_step

    model = ir.serde.deserialize_model(_concat_model(width=48))
    (group,) = [g for g in analyze_channels(model, None).groups if g.num_units == 96]
    assert round_step(group, 0) == AUTO_STEP
    assert round_step(group, 8) == 8
    small = ir.serde.deserialize_model(_concat_model(width=24))
    (group,) = [g for g in analyze_channels(small, None).groups if g.num_units == 48]
    assert round_step(group, 0) == 1
