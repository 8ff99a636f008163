"""docs/cli.md, generated from the argument parser so the reference cannot drift.

``python -m nnopt_graph.cli_docs > docs/cli.md`` rewrites it; a test fails when it is stale.
"""

from __future__ import annotations

__all__ = ["cli_reference"]

import argparse

_HEADER = """# Command-line reference

Generated from the argument parser (`python -m nnopt_graph.cli_docs > docs/cli.md`); a test
fails when this file is stale.

## Exit codes

| exit | meaning |
|---|---|
| 0 | done. A guarded rollback is a result: the best model meeting the guard is written and stderr says what was rolled back |
| 1 | the job failed and nothing was written: a pass failed, the verification or the guard failed, a rollback under `--fail-on-rollback`, or `compare` found the models different |
| 2 | usage or bad input: one line `nnopt-graph: error: ...` (no traceback unless `--debug`), nothing written |

## Guard and tolerance expressions (`--guard`, `compare --tolerance`)

```
EXPR      := TERM ("," TERM)*            comma: all must hold
TERM      := METRIC ["." REDUCTION] OP NUMBER
METRIC    := cosine | rel_l2 | max_abs | sqnr | top1 | metric
REDUCTION := min | max | mean | median | pN      (N-th percentile over samples, 0 < N < 100)
OP        := >= | <= | > | <
```

Every metric is measured per held-out sample and per output, reduced over samples, and the
worst output decides. Without a reduction the worst sample counts: `cosine>=0.99` means
`cosine.min>=0.99`, `rel_l2<=0.05` means `rel_l2.max<=0.05`, `sqnr>=30` means `sqnr.min>=30`;
`top1` is the argmax agreement rate (`top1.mean`); `metric` is the value of your own
function (Python API, `metric=`). The default guard of a pipeline with lossy passes is
`cosine.min>=0.99`. With fewer than 16 held-out samples the guard warns: give `--eval DATA`
or a larger `--calib` (without `--eval`, the last 20% of `--calib` is held out).

## Equality (verification of lossless pipelines, `compare` without `--tolerance`)

Per output and per sample: the same shape and dtype; integer and bool outputs bit-exact;
float outputs element-wise within `atol + rtol * |ref|` and with a relative L2 error within
a bound (`rtol 1e-4, atol 1e-5, rel_l2 <= 1e-5`; why in `nnopt_graph/check/equality.py` and
`bench/results/equality_margin.md`); NaN and Inf in the same places. Cosine never decides
equality.

## Speed decisions

`--speed-check model` (default): int8 is kept or dropped by a deterministic cost model (what
ONNX Runtime fuses, MACs, standalone Quantize/Dequantize traffic, a fixed cost per extra
kernel call such as the Transposes ORT adds around int8 kernels), so the same command gives
the same file on a busy machine. MACs are counted at the calibration data's shapes; where
shape inference cannot size a node (a padding or reshape computed in the graph), one
calibration sample is run to read its shapes. The report's `nodes-of-unknown-macs` counts
the nodes still unsized, which the model counts as free. `--speed-check measure`: timed, interleaved runs with a 3%
margin, recorded in the report.
"""


def _usage(parser: argparse.ArgumentParser) -> str:
    text = parser.format_usage().strip()
    return text.replace("usage: ", "", 1)


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:  # noqa: SLF001  (argparse has no public walk)
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names = (
            ", ".join(f"`{o}`" for o in action.option_strings)
            or f"`{action.metavar or action.dest}`"
        )
        if action.metavar and action.option_strings:
            names += f" `{action.metavar}`"
        names = names.replace("|", "\\|")
        help_text = (action.help or "").replace("|", "\\|").replace("\n", " ")
        if action.choices and not isinstance(action.choices, dict):
            help_text += f" (one of: {', '.join(map(str, action.choices))})"
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
            help_text += f" (default: {action.default})"
        rows.append(f"| {names} | {help_text} |")
    return rows


def cli_reference() -> str:
    """The whole docs/cli.md text."""
    import os

    from nnopt_graph.cli import _build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps usage to the terminal: fix the width
    parser = _build_parser()
    lines = [_HEADER, "## Commands", ""]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    for name, command in sub.choices.items():
        lines += [f"### `nnopt-graph {name}`", "", "```", _usage(command), "```", ""]
        if command.description:
            lines += [command.description, ""]
        lines += ["| argument | meaning |", "|---|---|", *_arguments(command), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    import sys

    sys.stdout.write(cli_reference())
