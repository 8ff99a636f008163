"""The measuring commands: inspect (statistics), compare (two models' outputs), bench (latency)."""

from __future__ import annotations

__all__ = ["cmd_bench", "cmd_compare", "cmd_inspect"]

import argparse
import logging
from pathlib import Path

from nnopt_graph.cli_args import PROG, existing_file, input_shapes
from nnopt_graph.errors import BadInputError, NnoptError


def cmd_inspect(args: argparse.Namespace) -> int:
    """``inspect MODEL``: node, parameter and size statistics."""
    from rich.console import Console
    from rich.table import Table

    from nnopt_graph.analysis.stats import summarize

    summary = summarize(existing_file(args.model), input_shapes(args.input_shape))
    if args.json:
        from nnopt_graph.report import strict_json

        print(strict_json(summary.to_json()))
        return 0
    console = Console()
    console.print(
        f"[bold]{summary.path}[/bold]  ir_version {summary.ir_version}  {summary.producer}"
    )
    console.print(
        "opsets: " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in summary.opsets.items())
    )
    for kind, values in (("input", summary.inputs), ("output", summary.outputs)):
        for v in values:
            console.print(f"{kind:6} {v['name']}: {v['dtype']} {v['shape']}")
    console.print(
        f"nodes {summary.nodes} (subgraphs {summary.subgraphs}, functions {summary.functions}); "
        f"params {summary.params:,}; weights {summary.weight_bytes:,} B; "
        f"file {summary.size_bytes:,} B"
    )
    if summary.flops is not None:
        console.print(
            f"FLOPs {summary.flops:,} (MACs {summary.macs:,}) at shapes {summary.flops_shapes}"
        )
    table = Table(title="ops")
    table.add_column("op")
    table.add_column("count", justify="right")
    for op, count in summary.op_histogram.items():
        table.add_row(op, str(count))
    console.print(table)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``compare A B``: per-sample fidelity of B against A; exit 1 when they differ."""
    from rich.console import Console
    from rich.table import Table

    from nnopt_graph.check.compare import compare_models
    from nnopt_graph.check.equality import LOSSLESS
    from nnopt_graph.check.guard import parse_guard
    from nnopt_graph.core.io import load
    from nnopt_graph.report import strict_json
    from nnopt_graph.runtime.data import input_specs, load_dataset, random_dataset, resolve_shapes

    conditions = parse_guard(args.tolerance) if args.tolerance else None
    a, b = existing_file(args.a), existing_file(args.b)
    model = load(a)
    load(b)  # reports a bad second file as bad input, before any work
    specs = input_specs(model)
    if args.calib:
        dataset = load_dataset(args.calib, specs)
    else:
        logging.getLogger(PROG).warning("no --calib data: comparing on random inputs")
        dataset = random_dataset(
            specs, resolve_shapes(specs, input_shapes(args.input_shape)), args.samples
        )
    result = compare_models(a, b, dataset, tolerance=None if conditions else LOSSLESS)
    if conditions is None:
        same = bool(result.equal)
        why = result.problems[:1] + [
            f"{o.name}: {', '.join(o.problems)}" for o in result.outputs if o.problems
        ]
        rule = f"equal ({LOSSLESS})"
    else:
        failed = []
        for c in conditions:
            value = result.metric(c.metric, c.reduction)
            if not result.shapes_match or not c.holds(value):
                failed.append(f"{c} (measured {value:.6g})")
        same = not failed
        why = failed
        rule = args.tolerance
    verdict = {"same": same, "rule": rule, "reasons": why}
    if args.json:
        print(strict_json({**result.to_json(), "verdict": verdict}))
    else:
        table = Table(
            title=f"{a.name} vs {b.name} ({result.samples} samples; worst sample per metric)"
        )
        for col in (
            "output",
            "cosine min",
            "rel_l2 max",
            "max_abs",
            "sqnr min dB",
            "top1",
            "shape",
        ):
            table.add_column(col, justify="right" if col != "output" else "left")
        for o in result.outputs:
            table.add_row(
                o.name,
                f"{o.cosine:.6f}",
                f"{o.rel_l2:.3g}",
                f"{o.max_abs:.3g}",
                f"{o.sqnr:.1f}",
                "-" if o.top1 is None else f"{o.top1:.4f}",
                "same" if o.shape_match and o.dtype_match else "DIFFERENT",
            )
        Console().print(table)
        print(
            ("same" if same else "DIFFERENT") + f" under {rule}" + ("" if same else f": {why[0]}")
        )
    return 0 if same else 1


def cmd_bench(args: argparse.Namespace) -> int:
    """``bench MODEL...``: interleaved latency on the requested execution providers."""
    from rich.console import Console
    from rich.table import Table

    from nnopt_graph.runtime.bench import benchmark, existing

    eps = [e.strip() for e in args.ep.split(",") if e.strip()]
    for ep in eps:
        if ep not in ("cpu", "cuda", "tensorrt"):
            raise BadInputError(
                f"unknown execution provider '{ep}' (choose from cpu, cuda, tensorrt)"
            )
    if args.json and not Path(args.json).parent.resolve().is_dir():
        raise BadInputError(f"{args.json}: folder does not exist")
    results = benchmark(
        existing(args.models),
        eps,
        input_shapes=input_shapes(args.input_shape),
        runs=args.runs,
        warmup=args.warmup,
        threads=args.threads,
    )
    table = Table(title=f"latency, {args.runs} interleaved runs after {args.warmup} warm-up")
    for col in (
        "model",
        "ep",
        "p50 ms",
        "p90 ms",
        "min..max ms",
        "ratio vs first (min/med/max)",
        "load s",
    ):
        table.add_column(col)
    for r in results:
        if not r.available:
            table.add_row(r.model, r.ep, "unavailable", "", "", r.note or "", "")
            continue
        lat, ratio = r.latency_ms, r.ratio_vs_first or {}
        table.add_row(
            r.model,
            r.ep,
            f"{lat['p50']:.3f}",
            f"{lat['p90']:.3f}",
            f"{lat['min']:.3f}..{lat['max']:.3f}",
            f"{ratio['min']:.3f} / {ratio['median']:.3f} / {ratio['max']:.3f}",
            f"{r.load_s:.3f}",
        )
    Console(width=200).print(table)
    available = [r for r in results if r.available]
    if args.json:
        from nnopt_graph.report import write_json

        write_json(
            {
                "runs": args.runs,
                "warmup": args.warmup,
                "threads": args.threads,
                "results": [r.to_json() for r in results],
            },
            args.json,
        )
    if not available:
        raise NnoptError(
            f"none of the requested execution providers ({', '.join(eps)}) is available in "
            "this onnxruntime build; install nnopt-graph[gpu] for cuda/tensorrt"
        )
    return 0
