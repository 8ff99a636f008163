"""Command line: nnopt-graph opt | list-passes | inspect | compare | bench."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import contextlib
import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from nnopt_graph.cli_args import PROG, Parser, check_pass_names, existing_file, input_shapes, int_in
from nnopt_graph.cli_measure import cmd_bench, cmd_compare, cmd_inspect
from nnopt_graph.errors import NnoptError


def _cmd_opt(args: argparse.Namespace) -> int:
    from nnopt_graph.core.collector import paused_collector

    # Importing the ONNX stack makes objects that live on and hardly any garbage.
    with paused_collector():
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

    existing_file(args.input)
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
        check_pass_names(names, "--print-ir-after")
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
        input_shapes=input_shapes(args.input_shape),
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


def _add_input_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME:D0,D1,...",
        help="concrete shape for a dynamic input (repeatable), e.g. input:1,3,224,224",
    )


def _build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    parser = Parser(
        prog=PROG, description="A compiler-style ONNX graph optimizer.", parents=[common]
    )
    from nnopt_graph import __version__

    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, required=True)

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
    ins.set_defaults(func=cmd_inspect)

    cmp_ = sub.add_parser("compare", parents=[common], help="output fidelity of B against A")
    cmp_.add_argument("a", metavar="A.onnx", help="the reference model")
    cmp_.add_argument("b", metavar="B.onnx", help="the candidate model")
    cmp_.add_argument(
        "--calib", metavar="DATA", help="inputs to compare on (.npz or test_data_set folder)"
    )
    _add_input_shape(cmp_)
    cmp_.add_argument(
        "--samples",
        type=int_in(1, 100_000),
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
    cmp_.set_defaults(func=cmd_compare)
    bench = sub.add_parser("bench", parents=[common], help="latency on ONNX Runtime EPs")
    bench.add_argument("models", nargs="+", metavar="MODEL", help="models to time, interleaved")
    bench.add_argument("--ep", default="cpu", help="comma-separated: cpu,cuda,tensorrt")
    _add_input_shape(bench)
    bench.add_argument(
        "--runs", type=int_in(1, 1_000_000), default=20, help="timed interleaved rounds"
    )
    bench.add_argument(
        "--warmup", type=int_in(0, 1_000_000), default=5, help="untimed runs per model first"
    )
    bench.add_argument("--threads", type=int_in(1, 1024), default=2, help="CPU intra-op threads")
    bench.add_argument("--json", metavar="FILE", help="also write the results as strict JSON")
    bench.set_defaults(func=cmd_bench)

    from nnopt_graph.search.cli import add_search_parser

    add_search_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 done, 1 job failed, 2 bad input).

    Without ``argv`` it runs as the program (``sys.argv``), which exits right after: the
    collector then skips the objects left alive (a loaded model is millions of them).
    """
    as_program = argv is None
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        if as_program:
            from nnopt_graph.core.collector import skip_collection_at_exit

            skip_collection_at_exit()


def _main(argv: list[str]) -> int:
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
