"""Every named preset, in one place: preset name -> pipeline text.

A preset name in pipeline text expands in place (``default,quantize-int8``). The target
presets are what ``--target T`` alone runs.
"""

from __future__ import annotations

__all__ = ["CPU_BEFORE_INT8", "DEFAULT_PIPELINE", "PRESETS"]

# BatchNormalization is folded before dedup: folding refuses weights that dedup made shared.
# Zero structure is looked for after folding, which can create it. Passes that infer
# shapes for their own use put the input's annotations back (see annotations_kept): the
# output carries the value_info the input had. Add infer-shapes to annotate everything.
DEFAULT_PIPELINE = (
    "lift-constants,eliminate-no-ops,fold-constants,fold-batchnorm,eliminate-zero-structure,"
    "dedup,cse,eliminate-dead-code,sort-topologically"
)

# What target-cpu runs between the lossless default and static int8 (see below); the cpu
# search space puts it before each of its int8 choices.
CPU_BEFORE_INT8 = "merge-parallel-matmuls,fold-conv-affine,fuse-hardswish,quantize-dynamic-int8"

PRESETS: dict[str, str] = {
    "default": DEFAULT_PIPELINE,
    # --target cpu / tensorrt alone: lossless cleanup, then int8 for that target (the pass
    # reads the target from the job, so one preset text serves both). On CPU, MatMuls
    # reading one input (an attention's Q/K/V) first merge into one (lossless), constant
    # per-channel Mul/Add after a Conv fold into it, and hard-swish spelled out in
    # four ops becomes HardSigmoid + Mul (rapidocr-cls: 0.67 of its latency, rapidocr-det
    # 0.77, in float; rounding-level changes, guarded). Then dynamic
    # int8 takes the MatMuls and LSTMs where its cost model says it pays (a
    # transformer's wide projections), then static int8 the Convs and what is left: on
    # minilm 0.586-0.608 of the input's latency against 0.637-0.639 the other way round
    # (bench/results/target_cpu.md).
    "target-cpu": f"{DEFAULT_PIPELINE},{CPU_BEFORE_INT8},quantize-int8",
    "target-tensorrt": f"{DEFAULT_PIPELINE},quantize-int8",
    # CUDA's EP has no int8 Conv/MatMul kernels: float16 activations, int4 MatMul weights.
    "target-cuda": f"{DEFAULT_PIPELINE},quantize-fp16,quantize-int4",
}
