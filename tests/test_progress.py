"""The progress display: the current pass is named, bars carry an ETA, and it is silent by default."""

from __future__ import annotations

from nnopt_graph.core import progress


def test_track_is_silent_unless_enabled(capsys):
    assert list(progress.track(range(3), "calibrating", 3)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_step_names_the_bar(monkeypatch):
    seen = []
    real = progress.track

    with progress.enable(), progress.step("pass 3/9 quantize-int8"):
        assert progress._STEP.get() == "pass 3/9 quantize-int8"
        seen.extend(real(range(2), "calibrating", 2))
    assert progress._STEP.get() == "" and seen == [0, 1]


def test_manager_sets_the_step_for_each_pass():
    import onnx_ir as ir

    from nnopt_graph.pipeline.base import Pass, PassContext, PassResult
    from nnopt_graph.pipeline.manager import PassManager

    steps = []

    class _Spy(Pass):
        """Test-only: records the step it ran under."""

        name = "test-spy-step"

        def run(self, model, context: PassContext) -> PassResult:
            steps.append(progress._STEP.get())
            return PassResult({})

    model = ir.from_onnx_text(
        '<ir_version: 8, opset_import: ["" : 17]> g (float[2] x) => (float[2] y) { y = Relu (x) }'
    )
    PassManager([_Spy(), _Spy()]).run(model)
    assert steps == ["pass 1/2 test-spy-step", "pass 2/2 test-spy-step"]
