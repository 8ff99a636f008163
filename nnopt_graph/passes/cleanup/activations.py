"""Hard-swish written out in elementary ops, rewritten as one HardSigmoid and a Mul.

Paddle and MobileNetV3 exports spell hard-swish ``x * Clip(x + 3, 0, 6) / 6``: four
kernels, and ONNX Runtime's CPU EP leaves and re-enters its blocked (NCHWc) Conv layout
around each one. ``x * HardSigmoid(x; 1/6, 1/2)`` is the same function in two kernels
that stay in that layout: rapidocr-cls runs in 0.67 of its time, rapidocr-det 0.91-0.94,
rapidocr-rec 0.87-0.90 (interleaved side runs, bench/results/target_cpu.md). HardSwish
itself needs opset 14 and measured a little slower than HardSigmoid + Mul here.

The result differs from the input by rounding only, but that compounds through deep
networks: relative L2 error 5.3e-6 on rapidocr-det's outputs, half the lossless bound
(check/equality.LOSSLESS). So the pass is lossy, runs under the guard, and stands in the
target-cpu preset rather than the lossless default. onnxscript's hard-swish rules do the
matching; their HardSwish rewrite is replaced by HardSigmoid + Mul, which every opset
since 6 has.
"""

from __future__ import annotations

__all__ = ["FuseHardSwishPass"]

from typing import Any

import onnx_ir as ir

from nnopt_graph.analysis.walk import all_nodes
from nnopt_graph.core.annotations import annotations_not_added
from nnopt_graph.core.names import NameScope
from nnopt_graph.pipeline.base import Pass, PassContext, PassResult, register_pass

_ALPHA, _BETA = 1 / 6, 0.5


def _rules() -> Any:
    """The two hard-swish patterns of onnxscript, both rewritten as ``x * HardSigmoid(x)``."""
    from onnxscript.rewriter import RewriteRuleSet
    from onnxscript.rewriter.rules.common import _fuse_hardswish as hs

    def float32_only(check: Any) -> Any:
        def checked(self: Any, op: Any, x: ir.Value, *args: Any, **kwargs: Any) -> Any:
            result = check(self, op, x, *args, **kwargs)
            bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
            dtype = x.dtype or (bias.dtype if bias is not None else None)
            if result and dtype != ir.DataType.FLOAT:
                return result.fail("HardSigmoid fusion: float32 only (ORT CPU's kernel)")
            return result

        return checked

    def rewritten(base: Any, times_x: bool) -> Any:
        """``base``'s matching (float32 only), rewritten as HardSigmoid (times x)."""

        # a base chosen at run time: mypy cannot check it
        class Rule(base):  # type: ignore[misc, valid-type]
            check = float32_only(base.check)

            def rewrite(  # the rule passes every bound value; only x is used
                self,
                op: Any,
                x: ir.Value,
                clip_min: ir.Value,
                clip_max: ir.Value,
                bias: ir.Value,
                divisor: ir.Value,
            ) -> ir.Value:
                sigmoid = op.HardSigmoid(x, alpha=_ALPHA, beta=_BETA)
                return op.Mul(x, sigmoid) if times_x else sigmoid

        return Rule().rule()

    # Clip(x + 3, 0, 6) * x / 6; and Clip(x + 3, 0, 6) / 6, whose product with x is then
    # the same pair.
    rules = [rewritten(hs.HardSwishFusion, True), rewritten(hs.HardSigmoidFusion, False)]
    return RewriteRuleSet(rules, commute=True)


def _count(model: ir.Model) -> tuple[int, int]:
    """(Clip nodes, HardSigmoid nodes) in every graph."""
    clips = sigmoids = 0
    for node in all_nodes(model):
        clips += node.op_type == "Clip"
        sigmoids += node.op_type == "HardSigmoid"
    return clips, sigmoids


def _name_new_nodes(model: ir.Model, old: set[int]) -> None:
    """Name the rules' nodes and values after the activation's input (``conv_out/...``).

    The rules name them ``node_HardSigmoid_<n>`` and ``val_<n>``, which say nothing.
    """
    scope = NameScope.for_graph(model.graph)  # node and value names, subgraphs included
    for node in all_nodes(model):
        if id(node) in old or not node.inputs or node.inputs[0] is None:
            continue
        base = node.inputs[0].name or "x"
        kind = "hardsigmoid" if node.op_type == "HardSigmoid" else "hardswish"
        scope.release(node.name or "")
        node.name = scope(f"{base}/{kind}")
        out = node.outputs[0]
        if out.name and out.name.startswith("val_") and not out.is_graph_output():
            scope.release(out.name)
            out.name = scope(f"{base}_{kind}")


@register_pass
class FuseHardSwishPass(Pass):
    """Hard-swish spelled x*Clip(x+3,0,6)/6 as x*HardSigmoid(x) (CPU; rounding-level change)."""

    name = "fuse-hardswish"
    lossy = True

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Apply the rules everywhere; count the Clips they replaced."""
        clips, sigmoids = _count(model)
        if not clips:
            return PassResult({"hardswish-fused": 0})
        old = {id(n) for n in all_nodes(model)}
        with annotations_not_added(model):
            _rules().apply_to_model(model)
        _name_new_nodes(model, old)
        clips_after, sigmoids_after = _count(model)
        fused = sigmoids_after - sigmoids
        result = PassResult({"hardswish-fused": fused})
        if fused:
            result.decisions.append(
                {"fuse-hardswish": f"{clips - clips_after} Clip(x+3,0,6)/6 as HardSigmoid"}
            )
        return result
