"""The verify-each instrument: structural checks and the ONNX checker after every pass."""

from __future__ import annotations

__all__ = ["VerifyEachInstrument"]

import onnx
import onnx_ir as ir

from nnopt_graph.check.structure import check_model_proto, structural_problems
from nnopt_graph.errors import CheckFailedError, one_line
from nnopt_graph.pipeline.base import Pass
from nnopt_graph.pipeline.manager import Instrument, PassRecord


class VerifyEachInstrument(Instrument):
    """After each pass: structural checks and the ONNX checker; fail naming the pass."""

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        """Raise CheckFailedError when the pass left the model broken."""
        problems = structural_problems(model)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise CheckFailedError(f"model is broken: {problems[0]}{more}")
        try:
            check_model_proto(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise CheckFailedError(f"ONNX checker rejects the model: {one_line(exc)}") from exc
