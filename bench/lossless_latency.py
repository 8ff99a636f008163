"""Latency and size of the lossless default pipeline's output against its input.

For every zoo model, the digits CNN and every real model in models/fetch.py: run the
default pipeline (verified), then time the input, the input again (A vs A: the noise
band) and the output under ONNX Runtime's CPU EP in one process, interleaved (A A' B,
B A' A, ...), spinning off, 2 intra-op threads, after warm-up, for at least --rounds
rounds and about --seconds of the input's run time. Per-round ratios against the
input's run of the same round give min/median/max. Also recorded: file size ratio,
node counts, whether node names survived, and whether ONNX Runtime's optimized graph
(its fusions) is the same op sequence for input and output.

Writes bench/results/lossless_latency.{json,md} and bench/results/lossless_size.md.

Usage: python bench/lossless_latency.py [--rounds N] [--seconds S] [--models NAME ...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models import fetch, zoo  # noqa: E402
from models.calib import write_calib_npz  # noqa: E402
from nnopt_graph import optimize  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DIGITS = ROOT / "models" / "digits"


def _commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, shared"


def _models(
    work: Path, names: list[str] | None
) -> dict[str, tuple[Path, Path, dict[str, np.ndarray]]]:
    """Name -> (model path, verification npz, one feed to time)."""
    out: dict[str, tuple[Path, Path, dict[str, np.ndarray]]] = {}
    for key, build in zoo.ZOO.items():
        name = f"zoo/{key}"
        if names and name not in names:
            continue
        path = work / f"{key}.onnx"
        onnx.save(build(), path)
        calib = write_calib_npz(key, work / f"{key}.npz")
        out[name] = (path, calib, zoo.example_inputs(key))
    if not names or "digits-cnn" in names:
        held = np.load(DIGITS / "digits_heldout.npz")
        out["digits-cnn"] = (
            DIGITS / "digits_cnn.onnx",
            DIGITS / "digits_heldout.npz",
            {"input": held["input"][:8]},
        )
    for key in fetch.REAL_MODELS:
        if names and key not in names:
            continue
        calib = write_calib_npz(key, work / f"{key}.npz")
        out[key] = (fetch.fetch(key), calib, fetch.example_inputs(key))
    return out


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    # Idle sessions' spinning threads would steal the cores from the one being timed.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ratios(times: list[float], base: list[float]) -> dict[str, float]:
    per_round = sorted(t / b for t, b in zip(times, base, strict=True))
    return {"min": per_round[0], "median": statistics.median(per_round), "max": per_round[-1]}


def time_interleaved(
    paths: list[Path],
    feed: dict[str, np.ndarray],
    *,
    rounds: int,
    seconds: float,
    warmup: int,
    max_rounds: int,
) -> tuple[list[list[float]], int]:
    """Per model, its run time in each round; every round runs every model once.

    The order within a round cycles through all permutations, so each model runs in
    each position equally often (a fixed position biases a model: the run after
    another session's is slower). Rounds: at least ``rounds``, and enough for about
    ``seconds`` of the first model's run time, at most ``max_rounds``.
    """
    sessions = [_session(p) for p in paths]
    outputs = [[o.name for o in s.get_outputs()] for s in sessions]
    warm = []
    for session, names in zip(sessions, outputs, strict=True):
        for _ in range(warmup):
            start = time.perf_counter()
            session.run(names, feed)
            warm.append(time.perf_counter() - start)
    per_run = max(statistics.median(warm[:warmup]), 1e-6)
    orders = list(itertools.permutations(range(len(sessions))))
    count = max(rounds, min(max_rounds, int(seconds / per_run) + 1))
    count += -count % len(orders)  # whole cycles of orders
    times: list[list[float]] = [[] for _ in sessions]
    for round_ in range(count):
        for i in orders[round_ % len(orders)]:
            start = time.perf_counter()
            sessions[i].run(outputs[i], feed)
            times[i].append(time.perf_counter() - start)
    return times, count


def _ort_graph(path: Path, dest: Path) -> list[str]:
    """The op types, in order, of ONNX Runtime's optimized graph of a model (CPU EP)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(dest)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(dest), load_external_data=False).graph
    return [f"{n.domain}:{n.op_type}" if n.domain else n.op_type for n in graph.node]


def _names(path: Path) -> set[str]:
    """Node names of a model, subgraphs (If/Loop bodies) included."""
    names: set[str] = set()
    stack = [onnx.load(str(path), load_external_data=False).graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            if node.name:
                names.add(node.name)
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return names


def _measure(
    name: str,
    path: Path,
    calib: Path,
    feed: dict[str, np.ndarray],
    work: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    out = work / f"{name.replace('/', '_')}.out.onnx"
    result = optimize(path, out, calib=calib, check=True)
    in_nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
    out_nodes = len(onnx.load(str(out), load_external_data=False).graph.node)
    before, after = _names(path), _names(out)
    ort_in = _ort_graph(path, work / "ort_in.onnx")
    ort_out = _ort_graph(out, work / "ort_out.onnx")
    if args.size_only:
        times, rounds = [[1.0], [1.0], [1.0]], 0
    else:
        times, rounds = time_interleaved(
            [path, path, out],
            feed,
            rounds=args.rounds,
            seconds=args.seconds,
            warmup=args.warmup,
            max_rounds=args.max_rounds,
        )
    fidelity = result.fidelity
    return {
        "model": name,
        "nodes_in": in_nodes,
        "nodes_out": out_nodes,
        "bytes_in": path.stat().st_size,
        "bytes_out": out.stat().st_size,
        "size_ratio": out.stat().st_size / path.stat().st_size,
        "value_info_in": len(onnx.load(str(path), load_external_data=False).graph.value_info),
        "value_info_out": len(onnx.load(str(out), load_external_data=False).graph.value_info),
        "names_kept": len(after & before),
        "names_new": len(after - before),
        "ort_nodes_in": len(ort_in),
        "ort_nodes_out": len(ort_out),
        "ort_graph_same_ops": ort_in == ort_out,
        "verified": fidelity is not None,
        "rounds": rounds,
        "p50_ms_in": statistics.median(times[0]) * 1e3,
        "p50_ms_in_again": statistics.median(times[1]) * 1e3,
        "p50_ms_out": statistics.median(times[2]) * 1e3,
        "a_vs_a": _ratios(times[1], times[0]),
        "out_vs_in": _ratios(times[2], times[0]),
    }


def _fmt(r: dict[str, float]) -> str:
    return f"{r['min']:.3f} / {r['median']:.3f} / {r['max']:.3f}"


def _band(row: dict[str, Any]) -> float:
    """Half-width of a model's noise band: |A' vs A median - 1| on that model."""
    return abs(row["a_vs_a"]["median"] - 1.0)


def _write(rows: list[dict[str, Any]], args: argparse.Namespace, commit: str | None = None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "commit": commit or _commit(),
        "machine": _machine(),
        "onnxruntime": ort.__version__,
        "threads": 2,
        "spinning": False,
        "min_rounds": args.rounds,
        "min_seconds": args.seconds,
        "warmup": args.warmup,
    }
    if not args.size_only:
        _write_latency(rows, args, meta)
    _write_size(
        rows, meta, "size-only run" if args.size_only else "same run as lossless_latency.md"
    )


def _write_latency(rows: list[dict[str, Any]], args: argparse.Namespace, meta: dict) -> None:
    (RESULTS / "lossless_latency.json").write_text(
        json.dumps({**meta, "results": rows}, indent=2) + "\n"
    )
    lines = [
        "# Lossless default pipeline: CPU latency of output vs input",
        "",
        f"Commit {meta['commit']}, {meta['machine']}, onnxruntime {meta['onnxruntime']}. "
        "Produced by `python bench/lossless_latency.py`.",
        "",
        "Each model: default pipeline (verified), then the input (A), the input again in a "
        "second session (A') and the output (B) timed in one process, interleaved "
        "(each round runs all three, the order cycling through the six permutations), CPU EP, 2 intra-op threads, spinning off, after "
        f"{args.warmup} warm-up runs, at least {args.rounds} rounds and about "
        f"{args.seconds:g} s of A. Ratios are per round against A: min / median / max. "
        "A' vs A is the noise band. 'ORT graph' says whether ONNX Runtime's optimized "
        "graph (after its fusions) has the same ops for input and output. 'in band': "
        "B/A median <= 1 + that model's |A'/A median - 1|.",
        "",
        "| model | rounds | A p50 ms | A' / A (noise) | B / A (output) | "
        "B/A median in band | ORT graph in → out |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        within = r["out_vs_in"]["median"] <= 1.0 + _band(r)
        same = "same ops" if r["ort_graph_same_ops"] else "differs"
        lines.append(
            f"| {r['model']} | {r['rounds']} | {r['p50_ms_in']:.3f} | {_fmt(r['a_vs_a'])} | "
            f"{_fmt(r['out_vs_in'])} | {'yes' if within else 'NO'} | "
            f"{r['ort_nodes_in']} → {r['ort_nodes_out']} ({same}) |"
        )
    medians = [r["out_vs_in"]["median"] for r in rows]
    outside = [r["model"] for r in rows if r["out_vs_in"]["median"] > 1.0 + _band(r)]
    lines += [
        "",
        "Outside their band (goal not met in this run): "
        + (", ".join(outside) if outside else "none")
        + ". The machine was shared by several jobs while this ran: per-round ratios "
        "span two orders of magnitude, and one A'/A figure per model is itself noisy.",
        "",
        f"Output/input medians: min {min(medians):.3f}, median {statistics.median(medians):.3f}, "
        f"max {max(medians):.3f}; geomean {float(np.exp(np.mean(np.log(medians)))):.3f}.",
        "",
    ]
    (RESULTS / "lossless_latency.md").write_text("\n".join(lines))


def _write_size(rows: list[dict[str, Any]], meta: dict, how: str) -> None:
    size = [
        "# Lossless default pipeline: file size of output vs input",
        "",
        f"Commit {meta['commit']}, {meta['machine']}. Produced by "
        f"`python bench/lossless_latency.py` ({how}). "
        "value_info = shape annotations in the main graph; names = node names (subgraphs "
        "included) of the input that the output keeps, and node names the output adds.",
        "",
        "| model | nodes in → out | bytes in → out | size ratio | value_info in → out | "
        "names kept / new |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        size.append(
            f"| {r['model']} | {r['nodes_in']} → {r['nodes_out']} | "
            f"{r['bytes_in']:,} → {r['bytes_out']:,} | {r['size_ratio']:.4f} | "
            f"{r['value_info_in']} → {r['value_info_out']} | "
            f"{r['names_kept']} / {r['names_new']} |"
        )
    size.append("")
    (RESULTS / "lossless_size.md").write_text("\n".join(size))


def main() -> None:
    """Run every model and write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20, help="at least this many rounds")
    parser.add_argument("--seconds", type=float, default=2.0, help="about this long of A")
    parser.add_argument("--max-rounds", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--models", nargs="*", help="subset, e.g. zoo/bert-encoder")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--size-only", action="store_true", help="no timing: the size table")
    parser.add_argument(
        "--rewrite", action="store_true", help="rewrite the tables from the saved JSON"
    )
    args = parser.parse_args()
    if args.rewrite:
        saved = json.loads((RESULTS / "lossless_latency.json").read_text())
        args.rounds, args.seconds = saved["min_rounds"], saved["min_seconds"]
        args.warmup, args.size_only = saved["warmup"], False
        _write(saved["results"], args, commit=saved["commit"])
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, (path, calib, feed) in _models(work, args.models).items():
            row = _measure(name, path, calib, feed, work, args)
            rows.append(row)
            print(
                f"{name}: A'/A {_fmt(row['a_vs_a'])}  B/A {_fmt(row['out_vs_in'])}  "
                f"size {row['size_ratio']:.4f}  ORT same ops {row['ort_graph_same_ops']}",
                flush=True,
            )
    if not args.no_write:
        _write(rows, args)


if __name__ == "__main__":
    main()
