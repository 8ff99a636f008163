"""Pruned encoders' latency under the windowed protocol with the A-vs-A band.

prune_transformer.py times A/B in alternating rounds, whose per-round ratios on a 0.2 ms
model spread 0.08-9x. Here each encoder is pruned as in its search row
(`prune-channels{ratio=0.25 search=true protect-last=false}`, guard `cosine>=0.95`) and
timed as bench/target_cpu.py times its rows (time_against_input: input A, A again, pruned
B, rotating windows of about 50 ms of A, 2 threads, spinning off, >= 30 windows), three
times in a row.

`--lengths padded` (the default) times the first held-out sample as stored, padded to
the tokenizer's 128 tokens. `--lengths own` times held-out samples at their own length
(every input cut to the longest attention mask of the batch, as sentence-transformers
pads), one sample per repeat, picked at evenly spaced length quantiles: a padded
sentence spends most of its time on padding, in attention work that FFN pruning does
not touch.

`--zoo-calib N` gives the zoo bert-encoder N generated calibration samples instead of 64
(the real models' calibration files are fixed).

Usage: python bench/prune_transformer_windowed.py [--models bert-encoder,minilm-l3-paraphrase]
    [--pipeline TEXT] [--name NAME] [--repeats N] [--lengths padded|own] [--zoo-calib N]
Writes bench/results/NAME.{json,md} (default prune_transformer_windowed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import prune_transformer as pt  # noqa: E402
from benchutil import commit_id, guard_verdict, write_results  # noqa: E402
from slice_hidden import _per_output  # noqa: E402
from target_cpu import time_against_input  # noqa: E402

from models import calib, zoo  # noqa: E402
from nnopt_graph import optimize  # noqa: E402

PIPELINE = "prune-channels{ratio=0.25 search=true protect-last=false}"
GUARD = "cosine>=0.95"


def own_length(feed: dict[str, Any]) -> dict[str, Any]:
    """The feed cut to its longest attention mask (right padding), or as it is without one.

    Every input whose last axis has the mask's length is cut along that axis.
    """
    mask = feed.get("attention_mask")
    if mask is None:
        return feed
    mask = np.asarray(mask)
    seq = mask.shape[-1]
    flat = mask.reshape(-1, seq)
    if not (np.isin(flat, (0, 1)).all() and (np.diff(flat, axis=-1) <= 0).all()):
        raise ValueError("attention_mask is not right-padded 1s then 0s")
    keep = int(flat.sum(axis=-1).max())
    return {k: (v[..., :keep] if v.shape[-1] == seq else v) for k, v in feed.items()}


def timed_feeds(held: Path, base: Path, first: dict[str, Any], lengths: str, count: int) -> list:
    """One feed per repeat: the stored first sample, or samples at their own length."""
    if lengths == "padded":
        return [first] * count
    from nnopt_graph.core import io
    from nnopt_graph.runtime.data import input_specs, load_dataset

    feeds = [own_length(f) for f in load_dataset(held, input_specs(io.load(base))).batches(1)]
    order = np.argsort([next(iter(f.values())).shape[-1] for f in feeds], kind="stable")
    picks = np.linspace(0, len(feeds) - 1, count).round().astype(int)
    return [feeds[order[i]] for i in picks]


def _tokens(feed: dict[str, Any]) -> int:
    mask = feed.get("attention_mask")
    return int(np.asarray(mask).shape[-1]) if mask is not None else 0


def main() -> None:
    """Prune, time three times per model, write the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="bert-encoder,minilm-l3-paraphrase")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pipeline", default=PIPELINE)
    parser.add_argument("--name", default="prune_transformer_windowed", help="results file name")
    parser.add_argument("--lengths", choices=("padded", "own"), default="padded")
    parser.add_argument("--zoo-calib", type=int, default=64, help="zoo calibration samples")
    args = parser.parse_args()
    commit = commit_id()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.models.split(","):
            base, cal, held, feed = pt.baseline(name, tmp)
            if name in zoo.ZOO and args.zoo_calib != 64:
                cal = calib.write_calib_npz(name, tmp / "zoo_calib.npz", args.zoo_calib, seed=0)
            out = tmp / f"{name}.pruned.onnx"
            result = optimize(
                str(base), out, args.pipeline, calib=str(cal), guard=GUARD, check=False
            )
            action = guard_verdict(result)
            a, b = pt._session(base), pt._session(out)
            worst = _per_output(a, b, pt._feeds(held, a))
            encoder = name in pt.ENCODERS
            weights = pt._weights(out, encoder) / pt._weights(base, encoder)
            feeds = timed_feeds(held, base, feed, args.lengths, args.repeats)
            for repeat, timed_feed in enumerate(feeds):
                timed = time_against_input(base, out, timed_feed)
                row = {"model": name, "repeat": repeat, "weights": round(weights, 4), **timed}
                row["guard_action"] = action
                row["worst_cosine"] = worst
                row["tokens"] = _tokens(timed_feed)
                row["commit"] = commit
                rows.append(row)
                print(json.dumps(row), flush=True)
    payload = {
        "commit": commit,
        "pipeline": args.pipeline,
        "guard": GUARD,
        "lengths": args.lengths,
        "zoo_calib": args.zoo_calib,
        "rows": rows,
    }
    lines = [
        "# Pruned encoders, windowed latency (bench/prune_transformer_windowed.py)",
        "",
        f"Commit {commit}; x86_64, 2 cores, shared; onnxruntime CPU EP, 2 threads, spinning "
        f"off. `{args.pipeline}` under `{GUARD}`, then input A, A again (A'/A: the noise band) "
        "and pruned B in rotating windows of about 50 ms of A (>= 30 windows, a model's "
        "window time its fastest run there); min / median / max of per-window B/A and the "
        "median's 95% CI. Weights: weight params after / before (MatMul/Gemm on encoders, "
        "also Conv on CNNs). Tokens: the timed feed's sequence length (--lengths "
        f"{args.lengths}; 0 where the model has no attention mask). Zoo calibration: "
        f"{args.zoo_calib} generated samples. Guard: what the guard did. Worst cosine: each "
        "float output's worst held-out sample.",
        "",
        "| model | repeat | tokens | guard | weights | worst cosine | B/A min / median / max | "
        "median 95% CI | A'/A median | windows | A ms | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lt = r["latency"]
        lines.append(
            f"| {r['model']} | {r['repeat']} | {r['tokens']} | {r['guard_action']} | "
            f"{r['weights']:.3f} | "
            + ", ".join(f"{k}: {v:.4f}" for k, v in r["worst_cosine"].items())
            + " | "
            f"{lt['min']:.2f} / "
            f"**{lt['median']:.3f}** / {lt['max']:.2f} | [{lt['ci95_low']:.3f}, "
            f"{lt['ci95_high']:.3f}] | {r['a_vs_a']['median']:.3f} | {r['windows']} | "
            f"{r['p50_ms_in']:.3f} | {r['load_1min'][0]} → {r['load_1min'][1]} |"
        )
    write_results(args.name, payload, lines)


if __name__ == "__main__":
    main()
