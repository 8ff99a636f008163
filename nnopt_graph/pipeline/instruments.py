"""Instruments: verify-each, time-passes, stats, print-ir-after, dump-dir."""

from __future__ import annotations

__all__ = [
    "DumpDirInstrument",
    "PrintIRAfterInstrument",
    "StatsInstrument",
    "TimePassesInstrument",
    "VerifyEachInstrument",
]

import sys
from pathlib import Path
from typing import TextIO

import onnx
import onnx_ir as ir
from rich.console import Console
from rich.table import Table

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


class TimePassesInstrument(Instrument):
    """Print a table of each pass's wall time at the end, like LLVM's -time-passes."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream or sys.stderr)

    def after_pipeline(self, model: ir.Model, records: list[PassRecord]) -> None:
        """Print the timing table."""
        total = sum(r.seconds for r in records) or 1e-12
        table = Table(title="pass execution timing")
        table.add_column("pass")
        table.add_column("seconds", justify="right")
        table.add_column("%", justify="right")
        for r in records:
            table.add_row(r.name, f"{r.seconds:.4f}", f"{100 * r.seconds / total:.1f}")
        table.add_row("total", f"{total:.4f}", "100.0")
        self.console.print(table)


class StatsInstrument(Instrument):
    """Print every pass's statistics at the end, like LLVM's -stats."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream or sys.stderr)

    def after_pipeline(self, model: ir.Model, records: list[PassRecord]) -> None:
        """Print the statistics table."""
        table = Table(title="statistics")
        table.add_column("pass")
        table.add_column("statistic")
        table.add_column("value", justify="right")
        for r in records:
            for key, value in r.stats.items():
                table.add_row(r.name, key, str(value))
        self.console.print(table)


class PrintIRAfterInstrument(Instrument):
    """Print the model as ONNX text after the named passes (or all, for 'all')."""

    def __init__(self, names: set[str], stream: TextIO | None = None) -> None:
        self.names = names
        self.stream = stream or sys.stderr

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        """Print the IR if this pass was asked for."""
        if "all" in self.names or pass_.name in self.names:
            self.stream.write(f"// ----- IR after {pass_.name} -----\n")
            self.stream.write(str(model))
            self.stream.write("\n")


class DumpDirInstrument(Instrument):
    """Write the model after each pass as DIR/NN-<pass>.onnx."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.index = 0

    def after_pass(self, pass_: Pass, model: ir.Model, record: PassRecord) -> None:
        """Save a snapshot; large models keep their weights in a side file."""
        from nnopt_graph.core.io import save

        self.index += 1
        save(model, self.directory / f"{self.index:02d}-{pass_.name}.onnx")
