"""Load and save models on onnx-ir: lazy external data, clear errors, atomic writes."""

from __future__ import annotations

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "external_data_files",
    "load",
    "save",
    "tensor_bytes",
    "uses_external_data",
]

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from nnopt_graph.errors import BadInputError

logger = logging.getLogger(__name__)

# Protobuf cannot serialize a message of 2 GiB or more: above this, weights go to a side file.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**20


def _iter_initializer_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value


def tensor_bytes(model: ir.Model) -> int:
    """Total bytes of all initializers, without reading external data."""
    return sum(t.nbytes for t in _iter_initializer_tensors(model))


def external_data_files(model: ir.Model) -> set[Path]:
    """Absolute paths of the external-data files the model's tensors read from."""
    files = set()
    for tensor in _iter_initializer_tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            files.add(Path(tensor.base_dir, tensor.location).resolve())
    return files


def uses_external_data(model: ir.Model) -> bool:
    """Whether any initializer lives in an external-data file."""
    return any(isinstance(t, ir.ExternalTensor) for t in _iter_initializer_tensors(model))


def _check_external_data(model: ir.Model, path: Path) -> None:
    for tensor in _iter_initializer_tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        data_path = Path(tensor.base_dir, tensor.location)
        # onnx-ir refuses, when it reads the data, files outside the model's folder
        # (after symlinks) and files with several hard links: report them here instead.
        if not data_path.resolve().is_relative_to(path.parent.resolve()):
            raise BadInputError(
                f"{path}: external-data file '{tensor.location}' of tensor "
                f"'{tensor.name}' is outside the model's folder"
            )
        if data_path.is_file() and data_path.stat().st_nlink > 1:
            raise BadInputError(
                f"{path}: external-data file '{tensor.location}' has several hard links, "
                "which onnx-ir refuses to read; copy it to a file of its own"
            )
        if not data_path.is_file():
            raise BadInputError(
                f"{path}: external-data file '{tensor.location}' of tensor "
                f"'{tensor.name}' not found next to the model"
            )
        end = (tensor.offset or 0) + tensor.nbytes
        if data_path.stat().st_size < end:
            raise BadInputError(
                f"{path}: external-data file '{tensor.location}' is truncated "
                f"(tensor '{tensor.name}' needs bytes up to {end})"
            )


def load(path: str | os.PathLike[str]) -> ir.Model:
    """Load an ONNX model into the IR, leaving external weights on disk until used.

    Raises:
        BadInputError: the file is missing, empty, not ONNX, truncated, or its
            external-data files are missing.
    """
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file")
    if path.is_dir():
        raise BadInputError(f"{path}: is a directory, not an ONNX file")
    if path.stat().st_size == 0:
        raise BadInputError(f"{path}: file is empty")
    try:
        proto = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise BadInputError(f"{path}: not a valid ONNX model ({_first_line(exc)})") from exc
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.graph.output:
        raise BadInputError(f"{path}: not a valid ONNX model (no graph or no ir_version)")
    if has_sparse_initializers(proto):
        # onnx-ir drops sparse initializers on load: make them dense first.
        from nnopt_graph.passes.sparse_storage import densify_sparse_initializers

        densify_sparse_initializers(proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # the IR rejects malformed protos with many exception types
        raise BadInputError(f"{path}: malformed ONNX model ({_first_line(exc)})") from exc
    del proto
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    _check_external_data(model, path)
    return model


def has_sparse_initializers(proto: onnx.ModelProto) -> bool:
    """Whether any graph of the model (subgraphs included) has sparse initializers."""
    stack = [proto.graph]
    while stack:
        graph = stack.pop()
        if graph.sparse_initializer:
            return True
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)
    return False


def _marked_sparse(model: ir.Model) -> bool:
    from nnopt_graph.passes.sparse_storage import MARKER

    return any(MARKER in t.metadata_props for t in _iter_initializer_tensors(model))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Validate that an output file can be written; returns it as a Path.

    Raises:
        BadInputError: its folder does not exist or the path is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{path}: output path is a directory")
    if not path.parent.resolve().is_dir():
        raise BadInputError(f"{path}: output folder '{path.parent}' does not exist")
    return path


@contextlib.contextmanager
def _no_initializer_value_info(model: ir.Model) -> Iterator[None]:
    """While saving, initializers carry no type, so no value_info is written for them.

    onnx-ir writes a value_info entry for every typed initializer; the tensor already
    says its type and shape, and on a model of many small weights the entries grew the
    file by a quarter. Initializers that are also graph inputs keep theirs.
    """
    saved = []
    for graph in model.graphs():
        inputs = {id(v) for v in graph.inputs}
        for value in graph.initializers.values():
            if id(value) not in inputs and (value.type is not None or value.shape is not None):
                saved.append((value, value.type, value.shape))
                value.type, value.shape = None, None
    try:
        yield
    finally:
        for value, old_type, old_shape in saved:
            value.type, value.shape = old_type, old_shape


@contextlib.contextmanager
def staged_save(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    write_sparse: bool = True,
) -> Iterator[Path]:
    """Write the model into a staging folder beside ``path``; publish it only on success.

    The body of the ``with`` block receives the staged model path (to verify it). When the
    block exits normally the files are renamed into place, the side file first; when it
    raises, the staging folder is removed and nothing is left at ``path``.

    Args:
        model: the model to write.
        path: final output path.
        external_data: force weights into a ``<name>.data`` side file (True), inline
            (False), or decide (None): external when the input used it or the weights
            reach protobuf's 2 GiB limit.
        write_sparse: write tensors marked by ``store-sparse`` as sparse initializers.
    """
    path = check_output_path(path)
    if external_data is None:
        external_data = uses_external_data(model) or tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD
    data_name = f"{path.name}.data"
    if external_data and (path.parent / data_name).resolve() in external_data_files(model):
        # Overwriting the file the lazy tensors still read from would corrupt the output.
        data_name = f"{path.stem}.nnopt.onnx.data"
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = stage / path.name
        with _no_initializer_value_info(model):
            if external_data:
                ir.save(model, staged, external_data=data_name, size_threshold_bytes=1024)
            else:
                ir.save(model, staged)
        if write_sparse and _marked_sparse(model):
            # store-sparse marks tensors; the sparse form is written on the saved proto.
            from nnopt_graph.passes.sparse_storage import write_sparse_initializers

            write_sparse_initializers(staged)
        yield staged
        if external_data:
            os.replace(stage / data_name, path.parent / data_name)
        os.replace(staged, path)
        logger.info("wrote %s", path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def save(
    model: ir.Model,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    write_sparse: bool = True,
) -> Path:
    """Write the model atomically: a failed write leaves nothing at ``path``.

    Tensors marked by ``store-sparse`` are written as sparse initializers unless
    ``write_sparse`` is False.
    """
    with staged_save(model, path, external_data=external_data, write_sparse=write_sparse):
        pass
    return Path(path)
