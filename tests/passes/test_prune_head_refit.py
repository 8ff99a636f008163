"""prune-channels refit-heads: the kept heads' value weights refit with the output projection."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper
from passes_util import ort_run, to_proto

from models import zoo
from nnopt_graph.check.equality import LOSSLESS, value_problems
from nnopt_graph.core.constants import const_array
from nnopt_graph.passes.prune import head_refit
from nnopt_graph.passes.prune.channels import PruneChannelsPass
from nnopt_graph.passes.prune.reconstruct import find_sinks
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.runtime.data import Dataset
from nnopt_graph.runtime.services import RuntimeServices

# One head of four per layer and some FFN neurons: what the frontier's fast rows remove.
HEADS_AND_NEURONS = "*.attn.*=0.25,*layer.0.ffn*=0.125,*layer.1.ffn*=0.375"
FFN_ONLY = "*.attn.*=0,*.ffn.*=0.375"


def _data(samples: int, seed: int) -> dict[str, np.ndarray]:
    feeds = [zoo.example_inputs("bert-encoder", seed=seed + i) for i in range(samples)]
    return {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}


@pytest.fixture(scope="module")
def bert() -> onnx.ModelProto:
    return zoo.build_bert_encoder()


@pytest.fixture(scope="module")
def calib() -> Dataset:
    data = _data(160, 0)
    return Dataset(data, "bert-calib", stacked=frozenset(data))


def _prune(proto: onnx.ModelProto, data: Dataset, ratios: str, **options) -> tuple:
    model = ir.serde.deserialize_model(proto)
    pass_ = PruneChannelsPass(
        group_ratios=ratios,
        max_layer_ratio=1.0,
        protect_first=False,
        protect_last=False,
        importance="obs",
        calib_samples=160,
        **options,
    )
    return model, pass_.run(model, PassContext(calibration=data))


def _cosines(proto: onnx.ModelProto, pruned: ir.Model, seed: int = 10_000) -> np.ndarray:
    """Per held-out sample: the cosine of the pruned output to the original."""
    held = _data(24, seed)
    candidate = to_proto(pruned)
    out = []
    for i in range(24):
        feed = {k: v[i] for k, v in held.items()}
        a = ort_run(proto, feed)[0].ravel().astype(np.float64)
        b = ort_run(candidate, feed)[0].ravel().astype(np.float64)
        out.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    return np.array(out)


def test_refit_heads_raises_the_worst_held_out_cosine(bert, calib):
    plain, plain_result = _prune(bert, calib, HEADS_AND_NEURONS, refit_heads=False)
    refit, result = _prune(bert, calib, HEADS_AND_NEURONS)
    assert result.stats["attention-blocks-refit"] == 2
    assert plain_result.stats["attention-blocks-refit"] == 0
    assert result.stats["layers-reconstructed"] == plain_result.stats["layers-reconstructed"]
    before, after = _cosines(bert, plain), _cosines(bert, refit)
    print(
        before.min(), after.min(), (1 - before).mean(), (1 - after).mean(), (after > before).mean()
    )
    assert after.min() >= before.min() + 0.002
    assert (1 - after).mean() <= 0.9 * (1 - before).mean()
    assert after.min() > 0.95  # the per-sample error bound of this allocation with the refit


def test_the_value_and_output_weights_and_biases_change_together(bert, calib):
    plain, _ = _prune(bert, calib, HEADS_AND_NEURONS, refit_heads=False)
    refit, _ = _prune(bert, calib, HEADS_AND_NEURONS)

    def weights(model: ir.Model) -> dict[str, np.ndarray]:
        out = {}
        for node in model.graph:
            for value in node.inputs:
                array = const_array(value) if value is not None else None
                if array is not None and array.ndim >= 1 and "layer.0.attn" in (node.name or ""):
                    out[f"{node.name}:{array.shape}"] = array
        return out

    a, b = weights(plain), weights(refit)
    assert a.keys() == b.keys()
    changed = {k.split(":")[0] for k in a if not np.array_equal(a[k], b[k])}
    assert changed == {
        "encoder.layer.0.attn.value.matmul",
        "encoder.layer.0.attn.value.add",
        "encoder.layer.0.attn.output.matmul",
        "encoder.layer.0.attn.output.add",
    }


def test_ffn_only_pruning_is_left_exactly_as_the_refit_leaves_it(bert, calib):
    """No head removed: no block to refit, and the model is bit-identical either way."""
    on, result = _prune(bert, calib, FFN_ONLY)
    off, _ = _prune(bert, calib, FFN_ONLY, refit_heads=False)
    assert result.stats["attention-blocks-refit"] == 0
    feed = {k: v[0] for k, v in _data(1, 500).items()}
    got, want = ort_run(to_proto(on), feed), ort_run(to_proto(off), feed)
    assert value_problems("last_hidden_state", want[0], got[0], LOSSLESS) == []
    assert np.array_equal(want[0], got[0])


def test_without_reconstruct_nothing_is_refit(bert, calib):
    _, result = _prune(bert, calib, HEADS_AND_NEURONS, reconstruct=False)
    assert result.stats["attention-blocks-refit"] == 0
    assert result.stats["layers-reconstructed"] == 0


def _bert_in_an_if(bert: onnx.ModelProto) -> onnx.ModelProto:
    """The encoder as the then-branch of an If on ``flag``; else the word embeddings."""
    graph = bert.graph
    then = helper.make_graph(list(graph.node), "then", [], list(graph.output))
    out = graph.output[0].name
    other = helper.make_graph(
        [helper.make_node("Gather", ["embeddings.word", "input_ids"], ["e"], name="embed")],
        "else",
        [],
        [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)],
    )
    flag = helper.make_tensor_value_info("flag", onnx.TensorProto.BOOL, [])
    node = helper.make_node("If", ["flag"], [out], name="if", then_branch=then, else_branch=other)
    outer = helper.make_graph(
        [node], "g", [*graph.input, flag], list(graph.output), list(graph.initializer)
    )
    model = helper.make_model(outer, opset_imports=list(bert.opset_import), ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_attention_inside_a_subgraph_is_not_refit(bert, calib):
    proto = _bert_in_an_if(bert)
    data = Dataset({**calib.arrays, "flag": np.ones(160, bool)}, "if-calib", stacked=calib.stacked)
    pruned, result = _prune(proto, data, HEADS_AND_NEURONS)
    assert result.stats["groups-pruned"] > 0
    assert result.stats["skipped-reconstruct-subgraph"] > 0
    assert result.stats["attention-blocks-refit"] == 0
    feed = {**{k: v[0] for k, v in _data(1, 500).items()}, "flag": np.array(True)}
    assert ort_run(to_proto(pruned), feed)[0].shape == (2, 16, 64)


def _sinks(model: ir.Model, names: list[str]):
    nodes = [n for n in model.graph if n.name in names]
    sinks, _ = find_sinks(model, nodes, {})
    return sinks


def test_blocks_are_the_output_projections_of_attention(bert):
    model = ir.serde.deserialize_model(bert)
    names = [
        "encoder.layer.0.attn.output.matmul",
        "encoder.layer.1.attn.output.matmul",
        "encoder.layer.0.ffn.down.matmul",
    ]
    blocks = head_refit.find_attention_blocks(_sinks(model, names))
    assert [b.sink.node.name for b in blocks] == names[:2]
    block = blocks[0]
    assert block.value.name == "encoder.layer.0.attn.value.matmul"
    assert block.value_add is not None and block.value_add[0].name.endswith("value.add")
    assert block.probs.name == "encoder.layer.0.attn.softmax.out"


def test_a_value_projection_read_elsewhere_is_not_a_block(bert):
    model = ir.serde.deserialize_model(bert)
    value = next(n for n in model.graph if n.name == "encoder.layer.0.attn.value.matmul")
    extra = ir.node("Identity", [value.outputs[0]], name="extra_reader")
    model.graph.append(extra)
    model.graph.outputs.append(extra.outputs[0])
    sinks = _sinks(model, ["encoder.layer.0.attn.output.matmul"])
    assert head_refit.find_attention_blocks(sinks) == []


def test_other_head_layouts_are_not_blocks(bert):
    model = ir.serde.deserialize_model(bert)
    back = next(n for n in model.graph if n.name == "encoder.layer.0.attn.context.transpose")
    back.attributes["perm"] = ir.AttrInt64s("perm", [0, 1, 2, 3])
    sinks = _sinks(model, ["encoder.layer.0.attn.output.matmul"])
    assert head_refit.find_attention_blocks(sinks) == []


def test_a_block_that_already_matches_the_teacher_is_left_unchanged(bert):
    """Nothing removed: the error is already zero, so the refit cannot gain and writes nothing."""
    model = ir.serde.deserialize_model(bert)
    blocks = head_refit.find_attention_blocks(_sinks(model, ["encoder.layer.0.attn.output.matmul"]))
    before = {v.name: const_array(v).copy() for v in model.graph.initializers.values()}
    stats = head_refit.refit_heads(
        RuntimeServices(),
        model,
        model.clone(),
        blocks,
        Dataset(_data(8, 0), "same", stacked=frozenset({"input_ids", "attention_mask"})),
    )
    assert stats == {"attention-blocks-refit": 0, "skipped-refit-heads-no-gain": 1}
    after = {v.name: const_array(v) for v in model.graph.initializers.values()}
    assert after.keys() == before.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_the_value_step_solves_its_kronecker_system_exactly():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((200, 7))
    residual = rng.standard_normal((200, 5))
    wo_h = rng.standard_normal((3, 5))
    v_now = rng.standard_normal((7, 3))
    ridge = 1e-2
    got = head_refit._value_step(f, residual, wo_h, v_now, ridge)
    ea, eb = np.linalg.eigvalsh(f.T @ f), np.linalg.eigvalsh(wo_h @ wo_h.T)
    mu = ridge * float(np.clip(ea, 0, None).mean() * np.clip(eb, 0, None).mean()) + 1e-12
    # vec(A V B) = (A kron B) vec(V) in row-major order, with A = F'F and B = Wo Wo'.
    system = np.kron(f.T @ f, wo_h @ wo_h.T) + mu * np.eye(21)
    rhs = (f.T @ residual @ wo_h.T + mu * v_now).ravel()
    np.testing.assert_allclose(got.ravel(), np.linalg.solve(system, rhs), rtol=1e-8, atol=1e-10)


def test_the_alternating_solve_never_raises_the_error():
    rng = np.random.default_rng(1)
    heads, d_in, d_head, d_out, rows = 3, 6, 2, 4, 300
    features = [rng.standard_normal((rows, d_in)) for _ in range(heads)]
    target = rng.standard_normal((rows, d_out))
    block_rows = head_refit._Rows(features, target, np.arange(rows) % 10)
    v = [rng.standard_normal((d_in, d_head)) for _ in range(heads)]
    wo, bo = rng.standard_normal((heads * d_head, d_out)), np.zeros(d_out)
    start = head_refit._error(block_rows, v, wo, bo)
    v2, wo2, bo2 = head_refit._solve(block_rows, [x.copy() for x in v], wo.copy(), bo, 1e-3)
    assert head_refit._error(block_rows, v2, wo2, bo2) < 0.9 * start


def _value_problem(seed: int, at_truth: bool):
    """A 2-head block's rows: target = the block with true weights + noise.

    Started away from the true weights, a refit recovers them on every batch; started at
    them, all it can fit is its own rows' noise.
    """
    rng = np.random.default_rng(seed)
    heads, d_in, d_head, d_out, rows = 2, 8, 2, 4, 400
    features = [rng.standard_normal((rows, d_in)) for _ in range(heads)]
    v_true = [rng.standard_normal((d_in, d_head)) for _ in range(heads)]
    wo_true = rng.standard_normal((heads * d_head, d_out))
    parts = [
        f @ v @ wo_true[h * d_head : (h + 1) * d_head]
        for h, (f, v) in enumerate(zip(features, v_true, strict=True))
    ]
    target = sum(parts) + rng.standard_normal((rows, d_out))
    block_rows = head_refit._Rows(features, target, np.arange(rows) // 20)
    if at_truth:
        return block_rows, [v.copy() for v in v_true], wo_true.copy(), np.zeros(d_out)
    v0 = [rng.standard_normal((d_in, d_head)) for _ in range(heads)]
    return block_rows, v0, rng.standard_normal((heads * d_head, d_out)), np.zeros(d_out)


def test_a_refit_that_carries_over_to_held_back_batches_validates():
    block_rows, v0, wo, bo = _value_problem(2, at_truth=False)
    assert head_refit._validates(block_rows, v0, wo, bo, 1e-3)


def test_a_refit_that_only_fits_noise_does_not_validate():
    """At the true weights the fit lowers its own rows' error, not the held-back ones'."""
    block_rows, v0, wo, bo = _value_problem(3, at_truth=True)
    fit = block_rows.subset(block_rows.batch % 5 != 4)
    v, wo2, bo2 = head_refit._solve(fit, [x.copy() for x in v0], wo.copy(), bo, 1e-3)
    assert head_refit._error(fit, v, wo2, bo2) < head_refit._error(fit, v0, wo, bo)
    assert not head_refit._validates(block_rows, v0, wo, bo, 1e-3)


def test_a_single_calibration_batch_is_never_refit():
    block_rows, v0, wo, bo = _value_problem(2, at_truth=False)
    one_batch = head_refit._Rows(block_rows.features, block_rows.target, np.zeros(400, int))
    assert not head_refit._validates(one_batch, v0, wo, bo, 1e-3)
