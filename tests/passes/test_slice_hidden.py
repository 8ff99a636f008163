"""slice-hidden: exact at ratio 0, bounded error when slicing, refusals leave the model alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from models import zoo
from nnopt_graph.check.equality import LOSSLESS, array_problems
from nnopt_graph.passes.prune.slice_hidden import SliceHiddenPass
from nnopt_graph.passes.prune.slice_match import match_chain
from nnopt_graph.passes.prune.slice_refit import token_rows
from nnopt_graph.passes.prune.slice_rewrite import Basis, apply_slice
from nnopt_graph.pipeline.base import PassContext
from nnopt_graph.pipeline.grammar import Pipeline
from nnopt_graph.runtime.data import Dataset
from tests.passes.passes_util import ort_run

D = 16


class _Encoder:
    """A tiny BERT-style encoder built with onnx.helper (torch-free)."""

    def __init__(self, seed: int = 0, low_rank: bool = False) -> None:
        self.rng = np.random.default_rng(seed)
        # Rank-1 block outputs and zero LayerNorm biases: each block adds one direction
        # to the residual stream, so the stream of a low-rank input stays low-rank.
        self.low_rank = low_rank
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def init(self, base: str, array: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(helper.make_tensor(name, TensorProto.FLOAT, array.shape, array.ravel()))
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.name(op), **attrs))
        return out

    def linear(self, x: str, n_in: int, n_out: int, bias: bool = True, rank1: bool = False) -> str:
        w = self.rng.standard_normal([n_in, n_out]) / n_in**0.5
        if rank1:
            w = np.outer(self.rng.standard_normal(n_in), self.rng.standard_normal(n_out)) / n_in
        w = self.init("w", w.astype(np.float32))
        y = self.op("MatMul", [x, w])
        if bias:
            y = self.op(
                "Add", [y, self.init("b", self.rng.normal(0, 0.1, n_out).astype(np.float32))]
            )
        return y

    def layer_norm(self, x: str, decomposed: bool = False) -> str:
        gamma = self.init("gamma", self.rng.uniform(0.5, 1.5, D).astype(np.float32))
        beta = self.rng.normal(0, 0.2, D) * (0.0 if self.low_rank else 1.0)
        beta = self.init("beta", beta.astype(np.float32))
        if not decomposed:
            return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-5)
        mean = self.op("ReduceMean", [x], axes=[-1])
        centred = self.op("Sub", [x, mean])
        var = self.op("ReduceMean", [self.op("Mul", [centred, centred])], axes=[-1])
        eps = self.init("eps", np.array(1e-5, np.float32))
        std = self.op("Sqrt", [self.op("Add", [var, eps])])
        return self.op("Add", [self.op("Mul", [self.op("Div", [centred, std]), gamma]), beta])

    def attention(self, x: str, bias: bool = True) -> str:
        q, k, v = (self.linear(x, D, D, bias) for _ in range(3))
        scores = self.op("MatMul", [q, self.op("Transpose", [k], perm=[0, 2, 1])])
        probs = self.op("Softmax", [scores], axis=-1)
        return self.linear(self.op("MatMul", [probs, v]), D, D, bias, rank1=self.low_rank)

    def ffn(self, x: str, bias: bool = True) -> str:
        hidden = self.op("Relu", [self.linear(x, D, 2 * D, bias)])
        return self.linear(hidden, 2 * D, D, bias, rank1=self.low_rank)

    def model(self, out: str, batch: int | str = "N", extra_outputs=()) -> onnx.ModelProto:
        outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, "S", D])]
        outputs += [
            helper.make_tensor_value_info(o, TensorProto.FLOAT, [batch, "S", D])
            for o in extra_outputs
        ]
        graph = helper.make_graph(
            self.nodes,
            "encoder",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, "S", D])],
            outputs,
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(model, full_check=True)
        return model


def _post_ln(
    layers: int = 2,
    seed: int = 0,
    bias: bool = True,
    batch: int | str = "N",
    expose_middle: bool = False,
    low_rank: bool = False,
) -> onnx.ModelProto:
    b = _Encoder(seed, low_rank)
    h = b.layer_norm("x")
    middle = h
    for _ in range(layers):
        h = b.layer_norm(b.op("Add", [b.attention(h, bias), h]))
        middle = h
        h = b.layer_norm(b.op("Add", [b.ffn(h, bias), h]))
    return b.model(h, batch, extra_outputs=[middle] if expose_middle else ())


def _pre_ln() -> onnx.ModelProto:
    b = _Encoder(1)
    h = "x"
    for _ in range(2):
        h = b.op("Add", [h, b.attention(b.layer_norm(h))])
        h = b.op("Add", [h, b.ffn(b.layer_norm(h))])
    return b.model(b.layer_norm(h))


def _decomposed() -> onnx.ModelProto:
    b = _Encoder(2)
    h = b.layer_norm("x", decomposed=True)
    h = b.layer_norm(b.op("Add", [b.ffn(h), h]), decomposed=True)
    return b.model(h)


def _mlp() -> onnx.ModelProto:
    b = _Encoder(3)
    return b.model(b.ffn("x"))


def _data(
    samples: int = 16, seq: int = 8, seed: int = 0, rank: int = D, noise: float = 0.05
) -> dict[str, np.ndarray]:
    """Samples of shape [seq, D]; with ``rank`` < D the tokens lie near a subspace."""
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(100).standard_normal([rank, D])
    x = rng.standard_normal([samples, seq, rank]) @ mix
    x += noise * rng.standard_normal([samples, seq, D])
    return {"x": x.astype(np.float32)}


def _run(proto: onnx.ModelProto, data: dict | None = None, **options):
    model = ir.serde.deserialize_model(proto)
    calibration = Dataset(data if data is not None else _data(), "test")
    result = SliceHiddenPass(**options).run(model, PassContext(calibration=calibration))
    out = ir.serde.serialize_model(model)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def _per_sample(a: onnx.ModelProto, b: onnx.ModelProto, data: dict) -> list[tuple[list, list]]:
    pairs = []
    for i in range(len(data["x"])):
        feed = {"x": data["x"][i : i + 1]}
        pairs.append((ort_run(a, feed), ort_run(b, feed)))
    return pairs


def _rel_errors(a: onnx.ModelProto, b: onnx.ModelProto, data: dict) -> np.ndarray:
    errors = []
    for ra, rb in _per_sample(a, b, data):
        x, y = ra[0].astype(np.float64), rb[0].astype(np.float64)
        errors.append(np.linalg.norm(x - y) / np.linalg.norm(x))
    return np.array(errors)


def _weights(proto: onnx.ModelProto) -> int:
    inits = {t.name: int(np.prod(t.dims)) for t in proto.graph.initializer}
    return sum(inits.get(n.input[1], 0) for n in proto.graph.node if n.op_type == "MatMul")


@pytest.mark.parametrize("layers", [1, 2])
def test_ratio_zero_is_exact_under_the_strict_check(layers):
    proto = _post_ln(layers)
    out, result = _run(proto, ratio=0.0)
    assert result.modified and result.stats["layernorms-rewritten"] == 1 + 2 * layers
    assert not any(n.op_type == "LayerNormalization" for n in out.graph.node)
    held = _data(6, seed=9)
    for ra, rb in _per_sample(proto, out, held):
        assert [o.name for o in out.graph.output] == [o.name for o in proto.graph.output]
        assert not array_problems("y", ra[0], rb[0], LOSSLESS)


def test_ratio_zero_keeps_an_exposed_middle_stream_exact():
    proto = _post_ln(2, expose_middle=True)
    out, _ = _run(proto, ratio=0.0)
    for ra, rb in _per_sample(proto, out, _data(4, seed=5)):
        assert len(ra) == len(rb) == 2
        for x, y in zip(ra, rb, strict=True):
            assert not array_problems("y", x, y, LOSSLESS)


def test_ratio_zero_without_biases_is_exact():
    proto = _post_ln(1, bias=False)
    out, _ = _run(proto, ratio=0.0)
    for ra, rb in _per_sample(proto, out, _data(4, seed=3)):
        assert not array_problems("y", ra[0], rb[0], LOSSLESS)


def test_a_stream_in_a_k_dim_subspace_slices_to_k_nearly_exactly():
    # Input of rank 8 and four rank-1 blocks: the stream at each LayerNorm spans at
    # most 8 + 4 = 12 directions, so hidden ratio 0.25 (k = 12) keeps all its energy.
    proto = _post_ln(2, bias=False, low_rank=True)
    out, result = _run(proto, _data(32, rank=8, noise=0.0), ratio=0.25, budget="hidden")
    decisions = [d for d in result.decisions if "layer" in d]
    assert [d["k"] for d in decisions] == [12] * 5
    assert all(d["energy_kept"] > 1 - 1e-6 for d in decisions)
    assert result.stats["params-removed"] == _weights(proto) - _weights(out) > 0
    errors = _rel_errors(proto, out, _data(8, seed=11, rank=8, noise=0.0))
    assert errors.max() < 1e-3, errors


def test_slicing_a_full_rank_stream_has_bounded_per_sample_error():
    proto = _post_ln(2)
    out, result = _run(proto, _data(32, rank=10), ratio=0.25, budget="hidden")
    decisions = [d for d in result.decisions if "layer" in d]
    assert all(0.5 < d["energy_kept"] < 1.0 for d in decisions)
    errors = _rel_errors(proto, out, _data(8, seed=11, rank=10))
    assert errors.max() < 1.0, errors  # random weights fill every direction of the stream


def test_pca_basis_beats_a_random_basis():
    proto = _post_ln(2)
    data = _data(32, rank=10)
    held = _data(8, seed=11, rank=10)
    pca, _ = _run(proto, data, ratio=0.25, budget="hidden")
    model = ir.serde.deserialize_model(proto)
    chain, _ = match_chain(model)
    assert chain is not None
    rng = np.random.default_rng(0)
    ones = np.ones([D, 1]) / D**0.5
    bases = []
    for _ in chain.streams:
        q, _ = np.linalg.qr(np.hstack([ones, rng.standard_normal([D, D - 1])]))
        bases.append(Basis(q[:, 1:13], 0.75))
    apply_slice(model, chain, bases)
    random = ir.serde.serialize_model(model)
    assert np.median(_rel_errors(proto, pca, held)) < 0.8 * np.median(
        _rel_errors(proto, random, held)
    )


def test_error_grows_with_the_ratio():
    proto = _post_ln(1)
    data, held = _data(32), _data(8, seed=4)
    small, _ = _run(proto, data, ratio=0.1, budget="hidden")
    large, _ = _run(proto, data, ratio=0.5, budget="hidden")
    assert _rel_errors(proto, small, held).mean() < _rel_errors(proto, large, held).mean()


def test_params_budget_is_met_counting_the_rotations():
    proto = _post_ln(2)
    out, result = _run(proto, ratio=0.25)
    summary = result.decisions[-1]
    assert summary["weight_params"] == _weights(proto)
    assert summary["weight_params_after"] == _weights(out) <= 0.75 * _weights(proto)


def test_second_run_is_a_no_op():
    proto = _post_ln(2)
    out, first = _run(proto, ratio=0.25, budget="hidden")
    assert first.modified
    again, result = _run(out, ratio=0.25, budget="hidden")
    assert not result.modified and result.stats["skipped-unmatched"] == 1
    assert (
        again.graph.SerializeToString()
        == ir.serde.serialize_model(ir.serde.deserialize_model(out)).graph.SerializeToString()
    )


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_pre_ln, "residual"),
        (_decomposed, "no LayerNormalization"),
        (_mlp, "no LayerNormalization"),
    ],
)
def test_unmatched_graphs_are_left_unchanged(build, reason):
    proto = build()
    before = ir.serde.serialize_model(ir.serde.deserialize_model(proto)).SerializeToString()
    out, result = _run(proto, ratio=0.25)
    assert not result.modified and result.stats["skipped-unmatched"] == 1
    assert reason in result.decisions[0]["status"]
    assert out.SerializeToString() == before


def test_residual_used_elsewhere_is_refused():
    proto = _post_ln(1)
    residual = next(
        n
        for n in proto.graph.node
        if n.op_type == "Add"
        and n.output[0]
        in {m.input[0] for m in proto.graph.node if m.op_type == "LayerNormalization"}
    )
    proto.graph.output.append(
        helper.make_tensor_value_info(residual.output[0], TensorProto.FLOAT, ["N", "S", D])
    )
    out, result = _run(proto, ratio=0.25)
    assert not result.modified and "other users" in result.decisions[0]["status"]
    assert sum(n.op_type == "LayerNormalization" for n in out.graph.node) == 3


def test_computed_scale_is_refused():
    proto = _post_ln(1)
    ln = next(n for n in proto.graph.node if n.op_type == "LayerNormalization")
    ln.input[1] = "x"  # not a constant
    _, result = _run(proto, ratio=0.25)
    assert not result.modified and "scale" in result.decisions[0]["status"]


def test_without_calibration_nothing_changes():
    model = ir.serde.deserialize_model(_post_ln(1))
    result = SliceHiddenPass(ratio=0.25).run(model, PassContext())
    assert not result.modified and result.stats["skipped-no-calibration"] == 1
    assert sum(n.op_type == "LayerNormalization" for n in model.graph) == 3


def test_fixed_batch_of_one_is_calibrated_sample_by_sample():
    proto = _post_ln(1, batch=1)
    out, result = _run(proto, ratio=0.0)
    assert result.modified
    for ra, rb in _per_sample(proto, out, _data(3, seed=2)):
        assert not array_problems("y", ra[0], rb[0], LOSSLESS)


def test_back_off_halves_the_ratio_to_the_floor():
    pass_ = SliceHiddenPass(ratio=0.2, min_ratio=0.05)
    ratios = []
    while pass_ is not None:
        ratios.append(pass_.options.ratio)
        pass_ = pass_.back_off()
    assert ratios == [0.2, 0.1, 0.05]


def test_pipeline_text_round_trip():
    pipeline = Pipeline.parse("slice-hidden{ratio=0.3 budget=hidden round-to=8}")
    assert Pipeline.parse(str(pipeline)) == pipeline
    (spec,) = pipeline.passes
    assert spec.instantiate().options.round_to == 8


def _bert_data(samples: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 1000, [samples, 16]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def test_zoo_bert_encoder_exact_at_zero_and_smaller_when_sliced():
    proto = zoo.ZOO["bert-encoder"]()
    calib, held = _bert_data(16, 0), _bert_data(4, 1)
    exact, _ = _run(proto, calib, ratio=0.0)
    sliced, result = _run(proto, calib, ratio=0.25, budget="hidden")
    assert result.stats["layernorms-rewritten"] == 5
    assert _weights(sliced) < _weights(proto)
    # The entry LayerNorm's input is a sum of embedding Gathers: their tables are rotated
    # (no projection MatMul), so they shrink with the hidden size.
    k = next(d["k"] for d in result.decisions if "layer" in d)
    tables = {t.name: list(t.dims) for t in sliced.graph.initializer}
    gathers = [n for n in sliced.graph.node if n.op_type == "Gather" and n.input[0] in tables]
    assert sorted(tables[n.input[0]] for n in gathers) == [[128, k], [1000, k]]
    assert not any(n.name.endswith("/Rotate") for n in sliced.graph.node)
    for i in range(4):
        feed = {k: v[i : i + 1] for k, v in held.items()}
        ref, same, cut = ort_run(proto, feed), ort_run(exact, feed), ort_run(sliced, feed)
        assert not array_problems("last_hidden_state", ref[0], same[0], LOSSLESS)
        assert cut[0].shape == ref[0].shape
        cos = float(np.sum(ref[0] * cut[0]) / np.linalg.norm(ref[0]) / np.linalg.norm(cut[0]))
        assert cos > 0.6  # random weights: little low-rank structure to keep


def test_a_slice_that_adds_weights_is_skipped():
    proto = _post_ln(1)
    out, result = _run(proto, ratio=0.0625, budget="hidden")  # 16 -> 15: rotations cost more
    assert not result.modified and result.stats["skipped-no-gain"] == 1
    assert "would add" in result.decisions[0]["status"]
    assert sum(n.op_type == "LayerNormalization" for n in out.graph.node) == 3


def test_layernorms_inside_subgraphs_are_left_alone():
    b = _Encoder(4)
    h = b.layer_norm(b.op("Add", [b.ffn(b.layer_norm("x")), b.layer_norm("x")]))
    body = helper.make_graph(
        b.nodes, "then", [], [helper.make_tensor_value_info(h, TensorProto.FLOAT, None)], b.inits
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["same"])],
        "else",
        [],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=body, else_branch=other)],
        "outer",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", D]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = ir.serde.deserialize_model(proto)
    calibration = Dataset({"x": _data(4)["x"], "flag": np.ones([4], bool)}, "test")
    result = SliceHiddenPass(ratio=0.25).run(model, PassContext(calibration=calibration))
    assert not result.modified and "main graph" in result.decisions[0]["status"]
    assert result.stats["skipped-subgraph-layernorms"] == 3
    assert (
        ir.serde.serialize_model(model).SerializeToString()
        == ir.serde.serialize_model(ir.serde.deserialize_model(proto)).SerializeToString()
    )


def test_round_to_keeps_a_multiple_below_the_hidden_size():
    proto = _post_ln(2)
    _, result = _run(proto, ratio=0.25, budget="hidden", round_to=8)
    assert {d["k"] for d in result.decisions if "layer" in d} == {8}  # 12 -> 16 > 15 -> 8


def test_replaced_weights_leave_the_model():
    proto = _post_ln(2)
    out, _ = _run(proto, ratio=0.25, budget="hidden")
    used = {i for n in out.graph.node for i in n.input}
    assert all(t.name in used for t in out.graph.initializer)
    assert sum(np.prod(t.dims) for t in out.graph.initializer) < sum(
        np.prod(t.dims) for t in proto.graph.initializer
    )


def test_refit_lowers_the_held_out_error_of_a_slice():
    # Same distribution for calibration and held-out data: the sequential least-squares
    # refit to the original stream must beat the plain PCA slice on the calibration data
    # and, by less (the dropped directions are lost either way), on 64 held-out samples.
    proto = _post_ln(2)
    data, held = _data(48, rank=10), _data(64, seed=12, rank=10)
    plain, _ = _run(proto, data, ratio=0.25, budget="hidden")
    refit, result = _run(proto, data, ratio=0.25, budget="hidden", refit=True)
    assert result.stats["layers-refit"] == 4  # every residual stream after the entry
    assert result.stats["maps-refit"] == 1  # the graph output's map back
    assert _weights(refit) == _weights(plain)  # the refit changes values, not shapes
    before, after = _rel_errors(proto, plain, data), _rel_errors(proto, refit, data)
    assert np.median(after) < 0.97 * np.median(before), (before, after)
    before, after = _rel_errors(proto, plain, held), _rel_errors(proto, refit, held)
    assert np.median(after) < np.median(before), (before, after)


def test_refit_is_not_run_at_ratio_zero_and_stays_exact():
    proto = _post_ln(1)
    out, result = _run(proto, ratio=0.0, refit=True)
    assert result.stats["layers-refit"] == 0 and result.stats["maps-refit"] == 0
    for ra, rb in _per_sample(proto, out, _data(4, seed=3)):
        assert not array_problems("y", ra[0], rb[0], LOSSLESS)


def test_refit_second_run_is_a_no_op():
    proto = _post_ln(1)
    out, _ = _run(proto, ratio=0.25, budget="hidden", refit=True)
    again, result = _run(out, ratio=0.25, budget="hidden", refit=True)
    assert not result.modified
    assert again.SerializeToString() == out.SerializeToString()


def test_token_rows_keep_the_masked_tokens_only():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    rows = token_rows(x, {"attention_mask": mask}, "attention_mask")
    np.testing.assert_array_equal(rows, x.reshape(6, 4)[[0, 1, 3]])


@pytest.mark.parametrize(
    "feed, name",
    [
        ({"attention_mask": np.ones([2, 2])}, "attention_mask"),  # not the stream's shape
        ({}, "attention_mask"),  # the model takes no such input
        ({"attention_mask": np.ones([2, 3])}, ""),  # no mask asked for
        ({"attention_mask": np.zeros([2, 3])}, "attention_mask"),  # nothing marked
    ],
)
def test_token_rows_fall_back_to_every_token(feed, name):
    x = np.ones([2, 3, 4], np.float32)
    assert token_rows(x, feed, name).shape == (6, 4)


def test_token_mask_input_restricts_the_pca_to_marked_tokens():
    # An extra mask input the graph ignores: with token-mask set, tokens it leaves out
    # (here huge outliers) no longer steer the basis.
    proto = _post_ln(2)
    proto.graph.input.append(
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "S"])
    )
    data = _data(32, rank=10)
    mask = np.ones(data["x"].shape[:2], np.int64)
    mask[:, -2:] = 0
    data["x"][:, -2:] *= 0.0
    data["x"][:, -2:] += np.random.default_rng(7).standard_normal([D]).astype(np.float32) * 50
    data["attention_mask"] = mask
    masked, r1 = _run(proto, data, ratio=0.25, budget="hidden", token_mask="attention_mask")
    plain, r2 = _run(proto, data, ratio=0.25, budget="hidden")
    e1 = [d["energy_kept"] for d in r1.decisions if "layer" in d]
    e2 = [d["energy_kept"] for d in r2.decisions if "layer" in d]
    assert e1 != e2
    held = _data(8, seed=11, rank=10)["x"]

    def error(model: onnx.ModelProto) -> float:
        errors = []
        for i in range(len(held)):
            feed = {"x": held[i : i + 1], "attention_mask": np.ones([1, held.shape[1]], np.int64)}
            x, y = ort_run(proto, feed)[0], ort_run(model, feed)[0]
            errors.append(np.linalg.norm(x - y) / np.linalg.norm(x))
        return float(np.median(errors))

    assert error(masked) < error(plain)
