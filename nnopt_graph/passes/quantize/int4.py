"""Weight-only blockwise int4 for large MatMul/Gemm: MatMulNBits or blocked DequantizeLinear."""

from __future__ import annotations

__all__ = [
    "QuantizeInt4Options",
    "QuantizeInt4Pass",
    "dequantize_nbits",
    "pack_matmul_nbits",
    "quantize_blockwise",
]

import collections
import dataclasses
import logging
import math
from typing import Any

import ml_dtypes
import numpy as np
import onnx_ir as ir

from nnopt_graph.analysis.walk import STANDARD_DOMAINS
from nnopt_graph.core.constants import const_array
from nnopt_graph.core.names import NameScope
from nnopt_graph.passes.quantize.common import (
    RankedBackOffPass,
    add_initializer,
    annotate_types,
    calibration_data,
    commit,
    drop_if_unused,
    ensure_opset,
    name_of,
    split_names,
    subgraph_nodes,
)
from nnopt_graph.pipeline.base import PassContext, PassResult, register_pass

logger = logging.getLogger(__name__)

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16)
_MS_DOMAIN = "com.microsoft"
# Activation rows kept per MatMul input for the AWQ-style scale search.
_RESERVOIR_ROWS = 256
_AWQ_GRID = tuple(i / 10 for i in range(11))


@dataclasses.dataclass(frozen=True)
class QuantizeInt4Options:
    """Options of quantize-int4."""

    block_size: int = dataclasses.field(default=32, metadata={"choices": (16, 32, 64, 128, 256)})
    method: str = dataclasses.field(default="rtn", metadata={"choices": ("rtn", "awq")})
    symmetric: bool = True
    format: str = dataclasses.field(
        default="matmulnbits", metadata={"choices": ("matmulnbits", "qdq")}
    )
    min_elements: int = dataclasses.field(
        default=1 << 18, metadata={"range": (0, None, True, True)}
    )
    accuracy_level: int = dataclasses.field(default=0, metadata={"choices": (0, 1, 2, 3, 4)})
    exclude: str = ""
    samples: int = dataclasses.field(default=16, metadata={"range": (0, None, True, True)})
    fallback: bool = True


def quantize_blockwise(
    weight: np.ndarray, block_size: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round-to-nearest 4-bit codes of a [K, N] weight in blocks of ``block_size`` along K.

    Returns (codes uint8 in [0, 15] of shape [N, blocks, block_size] with K zero-padded,
    scales [N, blocks], zero points uint8 [N, blocks]); weight ~ (code - zero) * scale.
    Symmetric blocks use zero point 8 and codes 1..15 (so -7..7 times the scale).
    """
    k, n = weight.shape
    blocks = math.ceil(k / block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float64)
    padded[:k] = weight
    w = padded.T.reshape(n, blocks, block_size)
    if symmetric:
        absmax = np.abs(w).max(axis=2)
        scale = np.where(absmax > 0, absmax / 7.0, 1.0)
        zero = np.full((n, blocks), 8, dtype=np.uint8)
    else:
        low = np.minimum(w.min(axis=2), 0.0)
        high = np.maximum(w.max(axis=2), 0.0)
        scale = np.where(high > low, (high - low) / 15.0, 1.0)
        zero = np.clip(np.rint(-low / scale), 0, 15).astype(np.uint8)
    codes = np.clip(np.rint(w / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    return codes, scale, zero


def dequantize_nbits(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, k: int) -> np.ndarray:
    """The [K, N] float weight that blockwise codes stand for."""
    n, blocks, block = codes.shape
    w = (codes.astype(np.float64) - zero[..., None]) * scale[..., None]
    return w.reshape(n, blocks * block)[:, :k].T


def pack_matmul_nbits(codes: np.ndarray, zero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' layout (com.microsoft, bits=4) of blockwise codes and zero points.

    B is uint8 [N, blocks, block_size / 2], two codes a byte with the even element in
    the low nibble; zero points uint8
    [N, ceil(blocks / 2)] packed the same way along the blocks.
    """
    packed = (codes[..., 0::2] & 0x0F) | ((codes[..., 1::2] & 0x0F) << 4)
    n, blocks = zero.shape
    padded = np.zeros((n, blocks + blocks % 2), dtype=np.uint8)
    padded[:, :blocks] = zero
    zp = (padded[:, 0::2] & 0x0F) | ((padded[:, 1::2] & 0x0F) << 4)
    return packed.astype(np.uint8), zp.astype(np.uint8)


@dataclasses.dataclass
class _Target:
    node: ir.Node
    weight: np.ndarray  # [K, N]
    bias: np.ndarray | None


@dataclasses.dataclass
class _Cache:
    scales: dict[str, np.ndarray | None] = dataclasses.field(default_factory=dict)
    errors: dict[str, float] = dataclasses.field(default_factory=dict)
    ranking: list[str] | None = None


def _targets(
    graph: ir.Graph, options: QuantizeInt4Options, exclude: set[str]
) -> tuple[list[_Target], collections.Counter[str]]:
    skipped: collections.Counter[str] = collections.Counter()
    found = []
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm") or node.domain not in STANDARD_DOMAINS:
            continue
        inputs = list(node.inputs)
        weight = const_array(inputs[1]) if len(inputs) > 1 else None
        if weight is None or inputs[0] is None or inputs[0].dtype not in _FLOATS:
            skipped["skipped-weight-not-constant"] += 1
            continue
        if weight.ndim != 2 or weight.dtype not in (np.float32, np.float16):
            skipped["skipped-unsupported-weight"] += 1
            continue
        if weight.size < options.min_elements:
            skipped["skipped-below-size-threshold"] += 1
            continue
        if name_of(node) in exclude:
            skipped["skipped-excluded"] += 1
            continue
        bias = None
        if node.op_type == "Gemm":
            attrs = node.attributes
            if (
                (attrs.get("transA") is not None and attrs["transA"].as_int())
                or (attrs.get("alpha") is not None and attrs["alpha"].as_float() != 1.0)
                or (attrs.get("beta") is not None and attrs["beta"].as_float() != 1.0)
                or options.format == "qdq"
            ):
                skipped["skipped-unsupported-gemm"] += 1
                continue
            if attrs.get("transB") is not None and attrs["transB"].as_int():
                weight = weight.T
            if len(inputs) > 2 and inputs[2] is not None:
                bias = const_array(inputs[2])
                if bias is None or bias.shape != (weight.shape[1],):
                    skipped["skipped-unsupported-gemm"] += 1
                    continue
        found.append(_Target(node, np.ascontiguousarray(weight), bias))
    return found, skipped


def _activation_samples(
    model: ir.Model, targets: list[_Target], data: Any, runtime: Any
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per MatMul input: mean |x| per channel and a reservoir of rows (one sweep)."""
    names = sorted({name_of(t.node.inputs[0]) for t in targets})
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = collections.defaultdict(int)
    rows: dict[str, list[np.ndarray]] = collections.defaultdict(list)
    rng = np.random.default_rng(0)

    def on_batch(batch: dict[str, np.ndarray]) -> None:
        for name, array in batch.items():
            flat = np.asarray(array, dtype=np.float64).reshape(-1, array.shape[-1])
            sums[name] = sums.get(name, 0.0) + np.abs(flat).sum(axis=0)
            counts[name] += flat.shape[0]
            take = min(len(flat), max(1, _RESERVOIR_ROWS // 8))
            rows[name].append(flat[rng.choice(len(flat), take, replace=False)])
            kept = sum(len(r) for r in rows[name])
            if kept > 2 * _RESERVOIR_ROWS:
                merged = np.concatenate(rows[name])
                rows[name] = [merged[rng.choice(len(merged), _RESERVOIR_ROWS, replace=False)]]

    runtime.capture(model, names, data, on_batch, threads=2)
    out = {}
    for name in names:
        if name in sums:
            merged = np.concatenate(rows[name])[:_RESERVOIR_ROWS]
            out[name] = (sums[name] / max(counts[name], 1), merged)
    return out


def _quant_error(x: np.ndarray, weight: np.ndarray, approx: np.ndarray) -> float:
    ref = x @ weight
    denom = float(np.sum(ref * ref)) or 1.0
    diff = ref - x @ approx
    return float(np.sum(diff * diff)) / denom


def _search_scales(
    weight: np.ndarray, mean_abs: np.ndarray, x: np.ndarray, options: QuantizeInt4Options
) -> tuple[np.ndarray | None, float, float]:
    """AWQ-style scale search on calibration rows.

    s = mean|x|^a (normalised), W' = diag(s) W quantized, X' = X / s; the grid value
    of a with the smallest output error on calibration rows wins.
    Returns (s or None for a = 0, best relative error, round-to-nearest error).
    """
    w = weight.astype(np.float64)
    k = w.shape[0]
    codes, scale, zero = quantize_blockwise(w, options.block_size, options.symmetric)
    rtn = _quant_error(x, w, dequantize_nbits(codes, scale, zero, k))
    best_err, best_s = rtn, None
    safe = np.maximum(mean_abs, 1e-8)
    for alpha in _AWQ_GRID[1:]:
        s = safe**alpha
        s = s / math.sqrt(float(s.max() * s.min()))
        codes, scale, zero = quantize_blockwise(
            w * s[:, None], options.block_size, options.symmetric
        )
        approx = dequantize_nbits(codes, scale, zero, k) / s[:, None]
        err = _quant_error(x, w, approx)
        if err < best_err:
            best_err, best_s = err, s
    return best_s, best_err, rtn


@register_pass
class QuantizeInt4Pass(RankedBackOffPass):
    """Quantize large constant MatMul/Gemm weights to blockwise int4 (weight-only)."""

    name = "quantize-int4"
    lossy = True
    Options = QuantizeInt4Options

    Cache = _Cache

    def run(self, model: ir.Model, context: PassContext) -> PassResult:
        """Replace each large MatMul/Gemm weight by int4 blocks; see the README."""
        options = self.options
        exclude = set(split_names(options.exclude))
        work = model.clone()
        annotate_types(work)
        if options.format == "qdq":
            targets, _ = _targets(work.graph, options, exclude)
            if targets:
                work, upgraded = ensure_opset(work, 21)
                work.ir_version = max(work.ir_version, 10)
        graph = work.graph
        targets, skipped = _targets(graph, options, exclude)
        skipped["skipped-nodes-in-subgraphs"] = subgraph_nodes(model, ("MatMul", "Gemm"))
        if not targets:
            return PassResult({"matmuls-int4": 0, **skipped})
        cache = self._cache
        samples: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        missing = [t for t in targets if name_of(t.node) not in cache.scales]
        if missing and (options.method == "awq" or options.fallback):
            data = calibration_data(work, context, options.samples)
            samples = _activation_samples(work, missing, data, context.runtime)
        for t in missing:
            sample = samples.get(name_of(t.node.inputs[0]))
            if sample is None:
                cache.scales[name_of(t.node)] = None
                continue
            mean_abs, rows = sample
            w = t.weight.astype(np.float64)
            if options.method == "awq":
                s, err, rtn = _search_scales(w, mean_abs, rows, options)
            else:
                codes, scale, zero = quantize_blockwise(w, options.block_size, options.symmetric)
                s, err = (
                    None,
                    _quant_error(rows, w, dequantize_nbits(codes, scale, zero, w.shape[0])),
                )
            cache.scales[name_of(t.node)] = s
            cache.errors[name_of(t.node)] = err
        if cache.ranking is None:
            cache.ranking = sorted(cache.errors, key=lambda n: -cache.errors[n])
        names = NameScope.for_graph(graph)
        stats: collections.Counter[str] = collections.Counter()
        smooth_inputs: dict[tuple[str, bytes], ir.Value] = {}
        for t in targets:
            node = t.node
            x = node.inputs[0]
            assert x is not None
            dtype = np.float16 if x.dtype == ir.DataType.FLOAT16 else np.float32
            s = cache.scales.get(name_of(node))
            w = t.weight.astype(np.float64)
            if s is not None:
                key = (name_of(x), s.tobytes())
                if key not in smooth_inputs:
                    inv = add_initializer(
                        graph, names, f"{name_of(x)}_awq_inverse", (1.0 / s).astype(dtype)
                    )
                    out = ir.Value(name=names(f"{name_of(x)}_awq"), type=x.type, shape=x.shape)
                    graph.insert_before(
                        node,
                        ir.node(
                            "Mul", [x, inv], outputs=[out], name=names(f"{name_of(x)}_AwqScale")
                        ),
                    )
                    smooth_inputs[key] = out
                x = smooth_inputs[key]
                w = w * s[:, None]
                stats["matmuls-awq-scaled"] += 1
            k, n = w.shape
            codes, scale, zero = quantize_blockwise(w, options.block_size, options.symmetric)
            base = name_of(node) or "matmul"
            if options.format == "matmulnbits":
                packed, zp = pack_matmul_nbits(codes, zero)
                inputs: list[ir.Value | None] = [
                    x,
                    add_initializer(graph, names, f"{base}_int4", packed),
                    add_initializer(graph, names, f"{base}_int4_scales", scale.astype(dtype)),
                ]
                if not options.symmetric:
                    inputs.append(add_initializer(graph, names, f"{base}_int4_zero_points", zp))
                if t.bias is not None:
                    inputs.extend([None] * (5 - len(inputs)))
                    inputs.append(
                        add_initializer(graph, names, f"{base}_bias", t.bias.astype(dtype))
                    )
                attrs: dict[str, Any] = {
                    "K": k,
                    "N": n,
                    "bits": 4,
                    "block_size": options.block_size,
                }
                if options.accuracy_level:
                    attrs["accuracy_level"] = options.accuracy_level
                new = ir.node(
                    "MatMulNBits",
                    inputs,
                    attributes=attrs,
                    domain=_MS_DOMAIN,
                    name=names(f"{base}_MatMulNBits"),
                )
                old_out = node.outputs[0]
                new.outputs[0].type = old_out.type
                new.outputs[0].shape = old_out.shape
                old_weight = node.inputs[1]
                old_bias = node.inputs[2] if len(node.inputs) > 2 else None
                ir.convenience.replace_nodes_and_values(
                    graph, node, [node], [new], [old_out], [new.outputs[0]]
                )
                work.opset_imports.setdefault(_MS_DOMAIN, 1)
                for value in (old_weight, old_bias):
                    stats["bytes-saved"] += drop_if_unused(graph, value)
            else:
                blocks = codes.shape[1]
                signed = (
                    (codes.astype(np.int16) - zero[..., None])
                    .reshape(n, blocks * options.block_size)[:, :k]
                    .T
                )
                q = np.ascontiguousarray(signed).astype(ml_dtypes.int4)
                q_value = add_initializer(graph, names, f"{base}_int4", q)
                s_value = add_initializer(
                    graph, names, f"{base}_int4_scales", np.ascontiguousarray(scale.T).astype(dtype)
                )
                out = ir.Value(
                    name=names(f"{base}_weight_dequantized"),
                    type=ir.TensorType(ir.DataType.from_numpy(np.dtype(dtype))),
                    shape=ir.Shape([k, n]),
                )
                dq = ir.node(
                    "DequantizeLinear",
                    [q_value, s_value],
                    attributes={"axis": 0, "block_size": options.block_size},
                    outputs=[out],
                    name=names(f"{base}_int4_DequantizeLinear"),
                )
                old_weight = node.inputs[1]
                graph.insert_before(node, dq)
                node.replace_input_with(0, x)
                node.replace_input_with(1, out)
                stats["bytes-saved"] += drop_if_unused(graph, old_weight)
            stats["bytes-saved"] -= int(codes.size // 2 + scale.size * np.dtype(dtype).itemsize)
            stats["matmuls-int4"] += 1
            logger.info(
                "%s '%s': int4 weights (%d x %d, blocks of %d)",
                node.op_type,
                name_of(node),
                k,
                n,
                options.block_size,
            )
        stats["bytes-saved"] = max(stats["bytes-saved"], 0)
        result = PassResult(dict(stats) | dict(skipped))
        result.decisions.append(
            {
                "int4": f"{options.format}, "
                f"{'symmetric' if options.symmetric else 'asymmetric'} blocks "
                f"of {options.block_size} along K, {options.method}",
                "relative-output-error": {
                    n: round(e, 6) for n, e in list(cache.errors.items())[:20]
                },
            }
        )
        commit(model, work)
        return result
