"""Map-typed values (skl2onnx's ZipMap, DictVectorizer): carried through the IR untouched.

onnx-ir 1.1 cannot represent ``map`` types (nor a sequence of maps): it refuses the whole
model. Map and Sequence(Map) types are valid ONNX, so before the proto is deserialized
their type is moved out of the way: a graph input's or output's type is serialized into
its own ``metadata_props`` under :data:`MARKER` (so it follows the value through clones
and passes), and intermediate ``value_info`` entries with such a type are dropped (they
are only annotations). After every save, :func:`restore_opaque_types` puts the types
back and removes the markers, so a written file is the input's types exactly.

Shape inference (onnx-ir's pass serializes the model, infers, and deserializes the result)
re-creates map-typed ``value_info``; :func:`_tolerate_map_types` makes onnx-ir's type
readers answer "no type" for those instead of refusing the model. It wraps two functions
of ``onnx_ir.serde`` once, at import, and only changes what they do for map types.
"""

from __future__ import annotations

__all__ = [
    "MARKER",
    "describe_type",
    "has_opaque_types",
    "ir_has_opaque_types",
    "opaque_type_of",
    "restore_opaque_types",
    "strip_opaque_types",
]

import base64
import logging
import os
from pathlib import Path

import onnx
import onnx_ir as ir

from nnopt_graph.core.graphs import model_graphs
from nnopt_graph.core.protos import proto_graphs

logger = logging.getLogger(__name__)

MARKER = "nnopt-graph:opaque-type"


def _has_map(tp: onnx.TypeProto) -> bool:
    """Whether onnx-ir cannot read this type (a map, possibly inside sequence/optional)."""
    kind = tp.WhichOneof("value")
    if kind == "map_type":
        return True
    if kind == "sequence_type":
        return _has_map(tp.sequence_type.elem_type)
    if kind == "optional_type":
        return _has_map(tp.optional_type.elem_type)
    return False


def _tolerate_map_types() -> None:
    """Let onnx-ir read a model whose value_info has map types, leaving those untyped."""
    serde = ir.serde
    for name in ("deserialize_type_proto_for_shape", "deserialize_type_proto_for_type"):
        original = getattr(serde, name)
        if getattr(original, "_nnopt_tolerant", False):
            continue

        def tolerant(proto: onnx.TypeProto, _original=original):  # type: ignore[no-untyped-def]
            if _has_map(proto):
                return None
            return _original(proto)

        tolerant._nnopt_tolerant = True  # type: ignore[attr-defined]
        setattr(serde, name, tolerant)


_tolerate_map_types()


def ir_has_opaque_types(model: ir.Model, graphs: list[ir.Graph] | None = None) -> bool:
    """Whether a graph input or output of the IR model carries a moved type.

    ``graphs``: the model's graphs (``core.graphs.model_graphs``), when the caller has them.
    """
    return any(
        MARKER in value.metadata_props
        for graph in (model_graphs(model) if graphs is None else graphs)
        for value in [*graph.inputs, *graph.outputs]
    )


def describe_type(tp: onnx.TypeProto) -> str:
    """A short human-readable name of a type, e.g. ``seq(map(int64, tensor(float)))``."""
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({onnx.helper.tensor_dtype_to_np_dtype(tp.tensor_type.elem_type)})"
    if kind == "sequence_type":
        return f"seq({describe_type(tp.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({describe_type(tp.optional_type.elem_type)})"
    if kind == "map_type":
        key = onnx.helper.tensor_dtype_to_np_dtype(tp.map_type.key_type)
        return f"map({key}, {describe_type(tp.map_type.value_type)})"
    return kind or "unknown"


def strip_opaque_types(proto: onnx.ModelProto, graphs: list[onnx.GraphProto] | None = None) -> int:
    """Move map types out of the proto so onnx-ir can read it; returns how many were moved.

    Graph inputs and outputs keep their type in ``metadata_props[MARKER]`` (base64 of the
    serialized TypeProto); intermediate ``value_info`` entries with a map type are dropped.
    ``graphs``: the proto's graphs (``proto_graphs``), when the caller has them.
    """
    moved = 0
    for graph in proto_graphs(proto.graph) if graphs is None else graphs:
        for vi in [*graph.input, *graph.output]:
            if vi.HasField("type") and _has_map(vi.type):
                entry = vi.metadata_props.add()
                entry.key = MARKER
                entry.value = base64.b64encode(vi.type.SerializeToString()).decode("ascii")
                logger.debug(
                    "carrying %s type of '%s' outside the IR", describe_type(vi.type), vi.name
                )
                vi.ClearField("type")
                moved += 1
        kept = [vi for vi in graph.value_info if not (vi.HasField("type") and _has_map(vi.type))]
        if len(kept) != len(graph.value_info):
            moved += len(graph.value_info) - len(kept)
            del graph.value_info[:]
            graph.value_info.extend(kept)
    return moved


def opaque_type_of(metadata_props: dict[str, str]) -> onnx.TypeProto | None:
    """The carried type of a value, from its ``metadata_props``, or None."""
    text = metadata_props.get(MARKER)
    if text is None:
        return None
    tp = onnx.TypeProto()
    tp.ParseFromString(base64.b64decode(text))
    return tp


def has_opaque_types(proto: onnx.ModelProto) -> bool:
    """Whether any graph input or output carries a moved type."""
    return any(
        entry.key == MARKER
        for graph in proto_graphs(proto.graph)
        for vi in [*graph.input, *graph.output]
        for entry in vi.metadata_props
    )


def restore_opaque_types(path: str | os.PathLike[str]) -> bool:
    """Put carried types back into a saved model file; returns whether it changed.

    The file is read without its external data and rewritten in place (weights that
    live in a side file stay there).
    """
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    if not has_opaque_types(proto):
        return False
    for graph in proto_graphs(proto.graph):
        for vi in [*graph.input, *graph.output]:
            props = {e.key: e.value for e in vi.metadata_props}
            tp = opaque_type_of(props)
            if tp is None:
                continue
            vi.type.CopyFrom(tp)
            others = [e for e in vi.metadata_props if e.key != MARKER]
            kept = [(e.key, e.value) for e in others]
            del vi.metadata_props[:]
            for key, value in kept:
                entry = vi.metadata_props.add()
                entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return True
