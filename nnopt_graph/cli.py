"""Command line: nnopt-graph opt | list-passes | inspect | compare | bench."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from nnopt_graph.errors import BadInputError, NnoptError

PROG = "nnopt-graph"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise BadInputError(message)


def _input_shapes(values: Sequence[str] | None) -> dict[str, list[int]]:
    from nnopt_graph.runtime.data import parse_input_shape

    shapes: dict[str, list[int]] = {}
    for text in values or ():
        name, dims = parse_input_shape(text)
        shapes[name] = dims
    return shapes


def _existing_file(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    return p


def _cmd_opt(args: argparse.Namespace) -> int:
    from nnopt_graph.optimize import optimize
    from nnopt_graph.pipeline.instruments import (
        DumpDirInstrument,
        PrintIRAfterInstrument,
        StatsInstrument,
        TimePassesInstrument,
    )
    from nnopt_graph.pipeline.manager import Instrument
    from nnopt_graph.report import print_summary

    _existing_file(args.input)
    instruments: list[Instrument] = []
    if args.print_ir_after:
        instruments.append(PrintIRAfterInstrument(set(args.print_ir_after.split(","))))
    if args.dump_dir:
        dump = Path(args.dump_dir)
        if not dump.is_dir():
            raise BadInputError(f"{dump}: --dump-dir folder does not exist")
        instruments.append(DumpDirInstrument(dump))
    if args.time_passes:
        instruments.append(TimePassesInstrument())
    if args.stats:
        instruments.append(StatsInstrument())
    if args.report and not Path(args.report).parent.resolve().is_dir():
        raise BadInputError(f"{args.report}: report folder does not exist")
    result = optimize(
        args.input,
        args.output,
        args.pipeline,
        target=args.target,
        calib=args.calib,
        eval_data=args.eval,
        input_shapes=_input_shapes(args.input_shape),
        guard=args.guard,
        check=not args.no_check,
        verify_each=args.verify_each,
        instruments=instruments,
        report=args.report,
    )
    print_summary(result.report)
    return 0


def _cmd_list_passes(args: argparse.Namespace) -> int:
    # The generated catalog, not the registry: listing imports neither onnx nor ORT.
    from nnopt_graph.pipeline.catalog import format_catalog, load_catalog

    print("\n".join(format_catalog(load_catalog())))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nnopt_graph.analysis.stats import summarize

    summary = summarize(_existing_file(args.model), _input_shapes(args.input_shape))
    if args.json:
        print(json.dumps(summary.to_json(), indent=2))
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nnopt_graph.io import load
    from nnopt_graph.runtime.data import input_specs, load_dataset, random_dataset, resolve_shapes
    from nnopt_graph.verify import compare_models

    a, b = _existing_file(args.a), _existing_file(args.b)
    model = load(a)
    load(b)  # reports a bad second file as bad input, before any work
    specs = input_specs(model)
    if args.calib:
        dataset = load_dataset(args.calib, specs)
    else:
        logging.getLogger(PROG).warning("no --calib data: comparing on random inputs")
        dataset = random_dataset(
            specs, resolve_shapes(specs, _input_shapes(args.input_shape)), args.samples
        )
    result = compare_models(a, b, dataset)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    table = Table(title=f"{a.name} vs {b.name} ({result.samples} feeds)")
    for col in ("output", "cosine", "max_abs", "rel_l2", "sqnr dB", "top1", "shape"):
        table.add_column(col, justify="right" if col != "output" else "left")
    for o in result.outputs:
        table.add_row(
            o.name,
            f"{o.cosine:.6f}",
            f"{o.max_abs:.3g}",
            f"{o.rel_l2:.3g}",
            f"{o.sqnr:.1f}",
            "-" if o.top1 is None else f"{o.top1:.4f}",
            "same" if o.shape_match else "DIFFERENT",
        )
    Console().print(table)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
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
        input_shapes=_input_shapes(args.input_shape),
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
    return 0


def _build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    parser = _Parser(
        prog=PROG, description="A compiler-style ONNX graph optimizer.", parents=[common]
    )
    from nnopt_graph import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)

    opt = sub.add_parser("opt", parents=[common], help="optimize a model")
    opt.add_argument("input", metavar="IN.onnx")
    opt.add_argument("output", metavar="OUT.onnx")
    opt.add_argument("-p", "--pipeline", help="pipeline text, e.g. 'default,infer-shapes'")
    opt.add_argument("--target", choices=["cpu", "cuda", "tensorrt"])
    opt.add_argument("--calib", metavar="DATA", help=".npz or test_data_set folder")
    opt.add_argument("--eval", metavar="DATA", help="held-out data for the guard")
    opt.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,...")
    opt.add_argument("--guard", metavar="EXPR")
    opt.add_argument("--report", metavar="FILE.json|FILE.html")
    opt.add_argument("--verify-each", action="store_true")
    opt.add_argument("--time-passes", action="store_true")
    opt.add_argument("--stats", action="store_true")
    opt.add_argument("--print-ir-after", metavar="NAMES", help="comma-separated pass names, or all")
    opt.add_argument("--dump-dir", metavar="DIR")
    opt.add_argument("--no-check", action="store_true", help="skip verification of the output")
    opt.set_defaults(func=_cmd_opt)

    lp = sub.add_parser("list-passes", parents=[common], help="list passes and presets")
    lp.set_defaults(func=_cmd_list_passes)

    ins = sub.add_parser("inspect", parents=[common], help="opsets, I/O, ops, params, FLOPs")
    ins.add_argument("model", metavar="MODEL")
    ins.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,...")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=_cmd_inspect)

    cmp_ = sub.add_parser("compare", parents=[common], help="output fidelity of B against A")
    cmp_.add_argument("a", metavar="A.onnx")
    cmp_.add_argument("b", metavar="B.onnx")
    cmp_.add_argument("--calib", metavar="DATA")
    cmp_.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,...")
    cmp_.add_argument("--samples", type=int, default=8, help="random feeds without --calib")
    cmp_.add_argument("--json", action="store_true")
    cmp_.set_defaults(func=_cmd_compare)
    bench = sub.add_parser("bench", parents=[common], help="latency on ONNX Runtime EPs")
    bench.add_argument("models", nargs="+", metavar="MODEL")
    bench.add_argument("--ep", default="cpu", help="comma-separated: cpu,cuda,tensorrt")
    bench.add_argument("--input-shape", action="append", metavar="NAME:D0,D1,...")
    bench.add_argument("--runs", type=int, default=20)
    bench.add_argument("--warmup", type=int, default=5)
    bench.add_argument("--threads", type=int, default=2, help="CPU intra-op threads")
    bench.add_argument("--json", metavar="FILE")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 done, 1 job failed, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format=f"{PROG}: %(levelname)s: %(message)s"
        if not debug
        else "%(name)s: %(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    if not debug:
        # Libraries we drive log their own internals at WARNING; ours is what users read.
        for name in ("onnx_ir", "onnxscript"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        args = _build_parser().parse_args(argv)
        from nnopt_graph import progress

        with progress.enable() if sys.stderr.isatty() else contextlib.nullcontext():
            return int(args.func(args))
    except NnoptError as exc:
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"{PROG}: error: internal error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
