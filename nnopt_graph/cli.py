"""Command line: nnopt-graph opt | list-passes | inspect | compare | bench."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from nnopt_graph.errors import BadInputError, NnoptError

PROG = "nnopt-graph"


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            import difflib

            known = [o for a in self._all_actions() for o in a.option_strings]
            for word in message[len(prefix) :].split():
                flag = word.split("=", 1)[0]
                if flag.startswith("-"):
                    close = difflib.get_close_matches(flag, known, n=1)
                    if close:
                        message += f"; did you mean '{close[0]}'?"
                        break
        raise BadInputError(message)

    def _all_actions(self) -> list[argparse.Action]:
        """This parser's actions and those of its subcommands."""
        actions = list(self._actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for sub in action.choices.values():
                    actions.extend(sub._actions)  # noqa: SLF001
        return actions


def _input_shapes(values: Sequence[str] | None) -> dict[str, list[int]]:
    from nnopt_graph.runtime.data import parse_input_shape

    shapes: dict[str, list[int]] = {}
    for text in values or ():
        name, dims = parse_input_shape(text)
        shapes[name] = dims
    return shapes


def _check_pass_names(names: set[str], flag: str) -> None:
    """Refuse names that are no registered pass (with the closest one as a suggestion).

    Raises:
        BadInputError: an unknown name.
    """
    import difflib

    from nnopt_graph.pipeline.registry import pass_names

    known = [*pass_names(), "all"]
    for name in sorted(names):
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else " (see 'nnopt-graph list-passes')"
            raise BadInputError(f"{flag}: unknown pass '{name}'{hint}")


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside the allowed range [{lo}, {hi}]")
        return value

    return parse


def _existing_file(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{p}: no such file")
    return p


def _cmd_opt(args: argparse.Namespace) -> int:
    from nnopt_graph.core.io import check_job_paths
    from nnopt_graph.job import optimize
    from nnopt_graph.pipeline.instruments import (
        DumpDirInstrument,
        PrintIRAfterInstrument,
        StatsInstrument,
        TimePassesInstrument,
    )
    from nnopt_graph.pipeline.manager import Instrument
    from nnopt_graph.report import print_summary
    from nnopt_graph.tracking import log_run, parse_log_spec

    _existing_file(args.input)
    data = [d for d in (args.calib, args.eval) if d]
    check_job_paths(
        args.input,
        args.output,
        report=args.report,
        dump_dir=args.dump_dir,
        in_place=args.in_place,
        extra_inputs=data,
    )
    instruments: list[Instrument] = []
    if args.print_ir_after:
        names = {n.strip() for n in args.print_ir_after.split(",") if n.strip()}
        _check_pass_names(names, "--print-ir-after")
        instruments.append(PrintIRAfterInstrument(names))
    if args.dump_dir:
        instruments.append(DumpDirInstrument(Path(args.dump_dir)))
    if args.time_passes:
        instruments.append(TimePassesInstrument())
    if args.stats:
        instruments.append(StatsInstrument())
    log_spec = parse_log_spec(args.log) if args.log else None  # bad --log: exit 2 up front
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
        fail_on_rollback=args.fail_on_rollback,
        speed_check=args.speed_check,
        seed=args.seed,
        in_place=args.in_place,
    )
    print_summary(result.report)
    if log_spec is not None:
        print(f"logged to {log_run(result.report, log_spec)}")
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from nnopt_graph.check.compare import compare_models
    from nnopt_graph.check.equality import LOSSLESS
    from nnopt_graph.check.guard import parse_guard
    from nnopt_graph.core.io import load
    from nnopt_graph.report import strict_json
    from nnopt_graph.runtime.data import input_specs, load_dataset, random_dataset, resolve_shapes

    conditions = parse_guard(args.tolerance) if args.tolerance else None
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


def _add_input_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME:D0,D1,...",
        help="concrete shape for a dynamic input (repeatable), e.g. input:1,3,224,224",
    )


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
    opt.add_argument("input", metavar="IN.onnx", help="the model to optimize")
    opt.add_argument("output", metavar="OUT.onnx", help="where to write the result (atomically)")
    opt.add_argument(
        "-p",
        "--pipeline",
        help="pipeline text, e.g. 'dedup,prune-channels{ratio=0.3}' (default: the lossless "
        "default pipeline, or the --target preset)",
    )
    opt.add_argument(
        "--target",
        choices=["cpu", "cuda", "tensorrt"],
        help="execution provider the output is for; alone, selects its compression preset",
    )
    opt.add_argument(
        "--calib",
        metavar="DATA",
        help=".npz (one array per input, samples on axis 0) or test_data_set folder; "
        "without --eval its last 20%% is held out for the guard",
    )
    opt.add_argument("--eval", metavar="DATA", help="held-out data the guard measures on")
    _add_input_shape(opt)
    opt.add_argument(
        "--guard",
        metavar="EXPR",
        help="budget of lossy passes over per-sample metrics, e.g. 'cosine.min>=0.99,top1>=0.98' "
        "(default for lossy pipelines: cosine.min>=0.99)",
    )
    opt.add_argument(
        "--report", metavar="FILE", help="write the report as JSON, or HTML for a .html name"
    )
    opt.add_argument(
        "--verify-each",
        action="store_true",
        help="structural checks and the ONNX checker after every pass",
    )
    opt.add_argument("--time-passes", action="store_true", help="print each pass's wall time")
    opt.add_argument("--stats", action="store_true", help="print every pass's statistics")
    opt.add_argument(
        "--log",
        metavar="tensorboard:DIR|wandb[:PROJECT]",
        help="record the run in TensorBoard or W&B (offline unless WANDB_MODE is set)",
    )
    opt.add_argument("--print-ir-after", metavar="NAMES", help="comma-separated pass names, or all")
    opt.add_argument("--dump-dir", metavar="DIR", help="write the model after each pass to DIR")
    opt.add_argument("--no-check", action="store_true", help="skip verification of the output")
    opt.add_argument(
        "--fail-on-rollback",
        action="store_true",
        help="exit 1 and write nothing when the guard rolls a lossy pass back "
        "(default: write the best model that meets the guard, warn, exit 0)",
    )
    opt.add_argument(
        "--speed-check",
        choices=["model", "measure"],
        default="model",
        help="how speed decisions are made: a deterministic cost model (default) or "
        "timed interleaved runs with a margin",
    )
    opt.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of generated data and randomized choices",
    )
    opt.add_argument("--in-place", action="store_true", help="allow OUT to be IN (overwrite it)")
    opt.set_defaults(func=_cmd_opt)

    lp = sub.add_parser("list-passes", parents=[common], help="list passes and presets")
    lp.set_defaults(func=_cmd_list_passes)

    ins = sub.add_parser("inspect", parents=[common], help="opsets, I/O, ops, params, FLOPs")
    ins.add_argument("model", metavar="MODEL", help="the model to describe")
    _add_input_shape(ins)
    ins.add_argument("--json", action="store_true", help="print strict JSON instead of tables")
    ins.set_defaults(func=_cmd_inspect)

    cmp_ = sub.add_parser("compare", parents=[common], help="output fidelity of B against A")
    cmp_.add_argument("a", metavar="A.onnx", help="the reference model")
    cmp_.add_argument("b", metavar="B.onnx", help="the candidate model")
    cmp_.add_argument(
        "--calib", metavar="DATA", help="inputs to compare on (.npz or test_data_set folder)"
    )
    _add_input_shape(cmp_)
    cmp_.add_argument(
        "--samples",
        type=_int_in(1, 100_000),
        default=8,
        help="generated feeds when there is no --calib",
    )
    cmp_.add_argument(
        "--tolerance",
        metavar="EXPR",
        help="budget like 'rel_l2.max<=1e-4,cosine.min>=0.999' (default: strict equality); "
        "exit 1 when it does not hold",
    )
    cmp_.add_argument("--json", action="store_true", help="print strict JSON instead of a table")
    cmp_.set_defaults(func=_cmd_compare)
    bench = sub.add_parser("bench", parents=[common], help="latency on ONNX Runtime EPs")
    bench.add_argument("models", nargs="+", metavar="MODEL", help="models to time, interleaved")
    bench.add_argument("--ep", default="cpu", help="comma-separated: cpu,cuda,tensorrt")
    _add_input_shape(bench)
    bench.add_argument(
        "--runs", type=_int_in(1, 1_000_000), default=20, help="timed interleaved rounds"
    )
    bench.add_argument(
        "--warmup", type=_int_in(0, 1_000_000), default=5, help="untimed runs per model first"
    )
    bench.add_argument("--threads", type=_int_in(1, 1024), default=2, help="CPU intra-op threads")
    bench.add_argument("--json", metavar="FILE", help="also write the results as strict JSON")
    bench.set_defaults(func=_cmd_bench)

    from nnopt_graph.search.cli import add_search_parser

    add_search_parser(sub)
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
        if not [a for a in argv if a != "--debug"]:
            # A bare command is a question: answer with the usage and the commands.
            _build_parser().print_help(sys.stderr)
            return 2
        args = _build_parser().parse_args(argv)
        if debug:
            import onnxruntime

            onnxruntime.set_default_logger_severity(0)
        from nnopt_graph.core import progress

        with progress.enable() if sys.stderr.isatty() else contextlib.nullcontext():
            return int(args.func(args))
    except NnoptError as exc:
        if debug:
            traceback.print_exc()
        from nnopt_graph.errors import one_line

        print(f"{PROG}: error: {one_line(exc, limit=1000)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        from nnopt_graph.errors import one_line

        print(
            f"{PROG}: error: internal error: {type(exc).__name__}: {one_line(exc)}", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
