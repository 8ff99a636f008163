"""fold_copied_reshape_dims: Reshape targets computed from the input's own dims."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from passes_util import model_from_text, ort_run

from nnopt_graph.passes.prune.shapes import fold_copied_reshape_dims

_HEADS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, S, 8] x, float[N, S, 8] other) => (float[N, S, 2, 4] y) {
    shape = Shape({src})
    i0 = Constant<value = int64 {I0}>()
    i1 = Constant<value = int64 {1}>()
    d0 = Gather<axis = 0>(shape, i0)
    d1 = Gather<axis = 0>(shape, i1)
    ax = Constant<value = int64[1] {0}>()
    u0 = Unsqueeze(d0, ax)
    u1 = Unsqueeze(d1, ax)
    heads = Constant<value = int64[2] {2, 4}>()
    target = Concat<axis = 0>(u0, u1, heads)
    y = Reshape<allowzero = {allowzero}>(x, target)
}
"""


def _model(src: str = "x", i0: int = 0, allowzero: int = 0) -> onnx.ModelProto:
    text = _HEADS.replace("{src}", src).replace("I0", str(i0))
    return model_from_text(text.replace("{allowzero}", str(allowzero)))


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal([3, 5, 8]).astype(np.float32) for k in ("x", "other")}


def test_copied_dims_become_zeros_and_outputs_stay_identical():
    proto = _model()
    model = ir.serde.deserialize_model(proto)
    assert fold_copied_reshape_dims(model) == 1
    (reshape,) = [n for n in model.graph if n.op_type == "Reshape"]
    assert reshape.inputs[1].const_value.numpy().tolist() == [0, 0, 2, 4]
    assert not [n for n in model.graph if n.op_type in ("Shape", "Gather", "Concat")]
    after = ir.serde.serialize_model(model)
    onnx.checker.check_model(after, full_check=True)
    np.testing.assert_array_equal(ort_run(proto, _feeds())[0], ort_run(after, _feeds())[0])


def test_dims_of_another_tensor_are_not_folded():
    model = ir.serde.deserialize_model(_model(src="other"))
    assert fold_copied_reshape_dims(model) == 0
    assert [n for n in model.graph if n.op_type == "Shape"]


def test_a_dim_copied_to_another_position_is_not_folded():
    model = ir.serde.deserialize_model(_model(i0=1))  # [S, S, 2, 4] is not [0, 0, 2, 4]
    assert fold_copied_reshape_dims(model) == 0


def test_allowzero_reshape_is_left_alone():
    model = ir.serde.deserialize_model(_model(allowzero=1))
    assert fold_copied_reshape_dims(model) == 0


def test_prune_channels_folds_only_when_asked():
    from nnopt_graph.passes.prune.channels import PruneChannelsPass
    from nnopt_graph.pipeline.base import PassContext

    for fold, expected in ((False, 0), (True, 1)):
        model = ir.serde.deserialize_model(_model())
        result = PruneChannelsPass(ratio=0.25, fold_shapes=fold).run(model, PassContext())
        assert result.stats["reshape-targets-folded"] == expected
