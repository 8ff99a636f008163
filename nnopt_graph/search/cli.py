"""The ``nnopt-graph search`` subcommand: its parser and its command."""

from __future__ import annotations

__all__ = ["add_search_parser", "cmd_search"]

import argparse
from typing import Any


def _int_at_least(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{value} must be at least {lowest}")
    return value


def _positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def _non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} must be positive")
    return value


def add_search_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``search`` to the CLI's subcommands (imports nothing heavy)."""
    p = subparsers.add_parser(
        "search", help="search pipelines for the fastest model within the guard"
    )
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.add_argument("input", metavar="IN.onnx", help="the model, or a folder of .onnx models")
    p.add_argument(
        "outdir", metavar="OUTDIR", help="front.json, front.md, report.html, front/, best.onnx"
    )
    p.add_argument("--target", required=True, choices=["cpu", "cuda", "tensorrt"])
    p.add_argument("--calib", required=True, metavar="DATA", help="calibration data")
    p.add_argument("--eval", metavar="DATA", help="held-out data the guard measures on")
    p.add_argument("--guard", metavar="EXPR", help="per-sample budget (default cosine.min>=0.99)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=_positive_int, help="distinct candidates (default 20)")
    budget.add_argument(
        "--budget-minutes", type=_positive_float, help="stop asking for candidates after this"
    )
    p.add_argument("--space", metavar="FILE", help="search space JSON (default: the target's)")
    p.add_argument("--ray", metavar="auto|ADDRESS", help="run evaluations as Ray tasks")
    p.add_argument(
        "--strategy",
        choices=["tpe", "nsga2", "random", "grid"],
        default="tpe",
        help="how candidates are asked (default: Optuna's multi-objective TPE, warm-started)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the strategy and the passes")
    p.add_argument(
        "--confirm",
        type=_non_negative_int,
        default=None,
        metavar="K",
        help="re-time the K fastest of the front by modelled latency, the fastest by its "
        "measured figure, the preset and the input in one run before choosing best.onnx "
        "(default 3; 0: off, best = the fastest by modelled latency)",
    )
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="parallel evaluations (local: <= cores)"
    )
    p.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        help="candidates asked per round (default 2): the same seed and batch ask the same "
        "candidates on any number of workers; at most this many run at once",
    )
    p.set_defaults(func=cmd_search)
    return p


def cmd_search(args: argparse.Namespace) -> int:
    """Run the search and print where its results are; 0 when a candidate met the guard."""
    from nnopt_graph.search.run import run_search

    results = run_search(
        args.input,
        args.outdir,
        target=args.target,
        calib=args.calib,
        eval_data=args.eval,
        guard=args.guard,
        trials=args.trials,
        budget_minutes=args.budget_minutes,
        space=args.space,
        ray=args.ray,
        seed=args.seed,
        workers=args.workers,
        confirm=args.confirm,
        strategy=args.strategy,
        **({} if args.batch is None else {"batch": args.batch}),
    )
    for r in results:
        assert r.best is not None
        ratio = r.best["latency_ratio"]["median"]
        model = (r.best.get("modelled") or {}).get("ratio")
        modelled = "" if model is None else f" (modelled x{model:.3f})"
        confirmed = ""
        if r.confirmation is not None and r.confirmation.windows:
            c = r.confirmation
            mine = next(e for e in c.entries if e["pipeline"] == r.best["pipeline"])
            confirmed = (
                f", confirmed x{mine['ratio']['median']:.3f} of {c.reference} "
                f"(A-vs-A {c.noise['median']:.3f}, {c.windows} windows)"
            )
        print(  # noqa: T201
            f"{r.outdir}: {len(r.records)} candidates ({r.evaluated} evaluated now), "
            f"{len(r.front)} on the front; best.onnx latency x{ratio:.3f} of the input"
            f"{modelled}{confirmed}: {r.best['pipeline']}"
        )
    return 0
