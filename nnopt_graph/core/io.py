"""Load and save models on onnx-ir: lazy external data, clear errors, atomic writes."""

# One module (~610 lines) on purpose: the atomic two-file write (stage folder, fsync,
# content-named data file, publish by rename, stale-stage cleanup) and the path checks
# that guard it (output is not an input, its data file or a calibration file) keep one
# invariant — a reader sees the old pair or the new pair, never a mix — and are tested
# together by interrupting every filesystem step (tests/test_io.py).

from __future__ import annotations

__all__ = [
    "EXTERNAL_DATA_THRESHOLD",
    "STAGE_PREFIX",
    "check_job_paths",
    "check_output_path",
    "clean_stale_stages",
    "external_data_files",
    "load",
    "referenced_data_files",
    "save",
    "staged_save",
    "tensor_bytes",
    "uses_external_data",
]

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from nnopt_graph.core.empty_outputs import has_trailing_empty_outputs, restore_empty_outputs
from nnopt_graph.core.graphs import model_graphs
from nnopt_graph.core.opaque_types import (
    ir_has_opaque_types,
    restore_opaque_types,
    strip_opaque_types,
)
from nnopt_graph.core.protos import proto_graphs
from nnopt_graph.core.tensor_size import tensor_nbytes
from nnopt_graph.errors import BadInputError

logger = logging.getLogger(__name__)

# Protobuf cannot serialize a message of 2 GiB or more: above this, weights go to a side file.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**20


def _iter_initializer_tensors(
    model: ir.Model, graphs: list[ir.Graph] | None = None
) -> Iterator[ir.TensorProtocol]:
    for graph in model_graphs(model) if graphs is None else graphs:
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value


def _external(tensors: Iterable[ir.TensorProtocol]) -> list[ir.ExternalTensor]:
    # The class's own ancestry: isinstance goes through the protocol machinery, slowly.
    return [t for t in tensors if ir.ExternalTensor in type(t).__mro__]  # type: ignore[misc]


def tensor_bytes(model: ir.Model) -> int:
    """Total bytes of all initializers, without reading external data."""
    return sum(tensor_nbytes(t) for t in _iter_initializer_tensors(model))


def _data_files(external: Iterable[ir.ExternalTensor]) -> set[Path]:
    return {Path(t.base_dir, t.location).resolve() for t in external}


def external_data_files(model: ir.Model) -> set[Path]:
    """Absolute paths of the external-data files the model's tensors read from."""
    return _data_files(_external(_iter_initializer_tensors(model)))


def uses_external_data(model: ir.Model) -> bool:
    """Whether any initializer lives in an external-data file."""
    return bool(_external(_iter_initializer_tensors(model)))


def _check_external_data(model: ir.Model, path: Path) -> None:
    for tensor in _external(_iter_initializer_tensors(model)):
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
    graphs = list(proto_graphs(proto.graph))  # one walk for the three questions below
    if any(graph.sparse_initializer for graph in graphs):
        # onnx-ir drops sparse initializers on load: make them dense first.
        from nnopt_graph.core.sparse_format import densify_sparse_initializers

        densify_sparse_initializers(proto)
    strip_opaque_types(proto, graphs)  # Map/Sequence(Map) types: onnx-ir cannot hold them
    external = _has_external_tensors(graphs)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # the IR rejects malformed protos with many exception types
        raise BadInputError(f"{path}: malformed ONNX model ({_first_line(exc)})") from exc
    del proto, graphs
    if external:  # without external tensors there is no base folder to set or file to check
        ir.external_data.set_base_dir(model.graph, str(path.parent))
        _check_external_data(model, path)
    return model


def _has_external_tensors(graphs: list[onnx.GraphProto]) -> bool:
    """Whether an initializer or a node's tensor attribute in ``graphs`` is external data."""
    external = onnx.TensorProto.EXTERNAL
    tensor, tensors = onnx.AttributeProto.TENSOR, onnx.AttributeProto.TENSORS
    for graph in graphs:
        if any(t.data_location == external for t in graph.initializer):
            return True
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == tensor and attr.t.data_location == external:
                    return True
                if attr.type == tensors and any(t.data_location == external for t in attr.tensors):
                    return True
    return False


def has_sparse_initializers(proto: onnx.ModelProto) -> bool:
    """Whether any graph of the model (subgraphs included) has sparse initializers."""
    return any(graph.sparse_initializer for graph in proto_graphs(proto.graph))


def _marked_sparse(tensors: Iterable[ir.TensorProtocol]) -> bool:
    from nnopt_graph.core.sparse_format import MARKER

    return any(MARKER in t.metadata_props for t in tensors)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# Staging folders are named ``.nnopt-stage.<OUT name>.<random>`` beside OUT. The process
# that owns one holds an exclusive lock on it; an unlocked one belongs to a dead process.
STAGE_PREFIX = ".nnopt-stage."
# The staged side file before it is named by its content.
_PAYLOAD = "payload.data"
_DIGEST_CHARS = 16


def _data_name(out_name: str, digest: str) -> str:
    return f"{out_name}.{digest[:_DIGEST_CHARS]}.data"


def _owned_data_pattern(out_name: str) -> re.Pattern[str]:
    """Side-file names that belong to the output ``out_name`` (ours, or the older scheme)."""
    stem = out_name[: -len(".onnx")] if out_name.endswith(".onnx") else out_name
    return re.compile(
        rf"(?:{re.escape(out_name)}(?:\.[0-9a-f]{{{_DIGEST_CHARS}}})?\.data"
        rf"|{re.escape(stem)}\.nnopt\.onnx\.data)"
    )


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


def referenced_data_files(path: str | os.PathLike[str]) -> set[Path]:
    """Resolved paths of the external-data files an ONNX file on disk refers to.

    Reads only the graph (no weights). A missing or unreadable file refers to nothing.
    """
    path = Path(path)
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:  # not ONNX, missing, truncated: it refers to no side file
        return set()
    files = set()
    for tensor in _all_tensor_protos(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    files.add((path.parent / entry.value).resolve())
    return files


def _all_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of a graph and its subgraphs (initializers, sparse, attributes)."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _is_live(stage: Path) -> bool:
    """Whether a staging folder belongs to a running process (it holds the folder's lock)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): never take another writer's folder
        return True
    try:
        fd = os.open(stage, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def clean_stale_stages(
    path: str | os.PathLike[str], keep: Iterable[str | os.PathLike[str]] = ()
) -> list[Path]:
    """Remove what an interrupted write of ``path`` left: staging folders and orphan side files.

    A staging folder whose process is gone is removed. A side file named for this output
    (``OUT.<hash>.data``, or the older ``OUT.data``) that the current ``OUT`` does not
    reference is an orphan of a write interrupted between its renames; it is removed only
    when no other writer of the same output is running, and never when it is in ``keep``
    (files still being read, like the side files of the model being saved). Returns the
    removed paths.
    """
    path = Path(path)
    kept = {Path(k).resolve() for k in keep}
    folder = path.parent
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    pattern = _owned_data_pattern(path.name)
    candidates = [p for p in entries if pattern.fullmatch(p.name) and p.is_file()]
    live = False
    for stage in entries:
        if not stage.name.startswith(f"{STAGE_PREFIX}{path.name}.") or not stage.is_dir():
            continue
        if _is_live(stage):
            live = True
            continue
        shutil.rmtree(stage, ignore_errors=True)
        removed.append(stage)
        logger.info("removed %s, left by an interrupted write", stage)
    if live or not candidates:
        return removed
    # Listed before the live check: a candidate of a writer that finished since is
    # referenced by the graph it published, read now.
    referenced = referenced_data_files(path)
    for candidate in candidates:
        if candidate.resolve() not in referenced | kept:
            with contextlib.suppress(OSError):
                candidate.unlink()
                removed.append(candidate)
                logger.info("removed %s, left by an interrupted write", candidate)
    return removed


def _is_same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _check_writable_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise BadInputError(f"{path}: {what} path is a directory")
    if not path.parent.resolve().is_dir():
        raise BadInputError(f"{path}: {what} folder '{path.parent}' does not exist")
    if not os.access(path.parent.resolve(), os.W_OK):
        raise BadInputError(f"{path}: {what} folder '{path.parent}' is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise BadInputError(f"{path}: {what} file exists and is not writable")


def check_job_paths(
    input: str | os.PathLike[str] | None,
    output: str | os.PathLike[str] | None,
    *,
    report: str | os.PathLike[str] | None = None,
    dump_dir: str | os.PathLike[str] | None = None,
    in_place: bool = False,
    extra_inputs: Iterable[str | os.PathLike[str]] = (),
) -> None:
    """Check every path of a job before any work, so a bad one writes nothing.

    OUT must not be a folder, nor the input (unless ``in_place``), nor one of the
    input's external-data files, nor a data file given as input (``extra_inputs``, e.g.
    --calib); the report must be a writable file path that is none of those; the dump
    folder must exist.

    Args:
        input: the input model path (None for an in-memory model).
        output: the output path, or None when nothing is written.
        report: the --report path.
        dump_dir: the --dump-dir folder.
        in_place: allow OUT to be the input (its side files are still protected).
        extra_inputs: other files the job reads (calibration data).

    Raises:
        BadInputError: a path is unusable; the message names it.
    """
    in_path = Path(input) if input is not None else None
    in_files: list[tuple[Path, str]] = []
    existing = [Path(p) for p in (output, report) if p is not None and Path(p).exists()]
    if in_path is not None:
        in_files.append((in_path, "the input model"))
        # Only an existing file can be a side file of the input: parse the graph then.
        if any(not _is_same_file(p, in_path) for p in existing):
            for data_file in sorted(referenced_data_files(in_path)):
                in_files.append((data_file, "an external-data file of the input"))
    for extra in extra_inputs:
        in_files.append((Path(extra), "an input data file"))
    written: list[tuple[Path, str]] = []
    if output is not None:
        out = Path(output)
        _check_writable_file(out, "output")
        for other, what in in_files:
            if _is_same_file(out, other):
                if in_place and what == "the input model":
                    continue
                hint = " (use --in-place to overwrite it)" if what == "the input model" else ""
                raise BadInputError(f"{out}: the output path is {what}{hint}")
        written.append((out, "the output"))
    if report is not None:
        rep = Path(report)
        _check_writable_file(rep, "report")
        for other, what in [*in_files, *written]:
            if _is_same_file(rep, other):
                raise BadInputError(f"{rep}: the report path is {what}")
    if dump_dir is not None:
        dump = Path(dump_dir)
        if not dump.is_dir():
            raise BadInputError(f"{dump}: --dump-dir folder does not exist")
        if not os.access(dump, os.W_OK):
            raise BadInputError(f"{dump}: --dump-dir folder is not writable")


def _fsync(path: Path) -> None:
    """Flush a file (or folder) to disk, where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _rename_payload(staged: Path, new_name: str) -> None:
    """Point the staged graph's external tensors at the side file's final name."""
    proto = onnx.load(staged, load_external_data=False)
    for tensor in _all_tensor_protos(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == _PAYLOAD:
                entry.value = new_name
    with open(staged, "wb") as handle:
        handle.write(proto.SerializeToString())


def _write_model(
    model: ir.Model,
    staged: Path,
    external_data: bool,
    write_sparse: bool,
    tensors: list[ir.TensorProtocol],
) -> None:
    if external_data:
        ir.save(model, staged, external_data=_PAYLOAD, size_threshold_bytes=1024)
    else:
        ir.save(model, staged)
    if has_trailing_empty_outputs(model):
        restore_empty_outputs(model, staged)
    if write_sparse and _marked_sparse(tensors):
        # store-sparse marks tensors; the sparse form is written on the saved proto.
        from nnopt_graph.core.sparse_format import write_sparse_initializers

        write_sparse_initializers(staged)


@contextlib.contextmanager
def _stage_folder(path: Path) -> Iterator[Path]:
    """A locked staging folder beside ``path``, removed when the block ends."""
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{path.name}.", dir=path.parent))
    lock_fd = None
    try:
        try:
            import fcntl

            lock_fd = os.open(stage, os.O_RDONLY)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (ImportError, OSError):
            pass
        yield stage
    finally:
        try:
            if lock_fd is not None:
                os.close(lock_fd)  # published (or failed): the folder is only litter now
        finally:
            shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def _no_initializer_value_info(graphs: list[ir.Graph]) -> Iterator[None]:
    """While saving, initializers carry no type, so no value_info is written for them.

    onnx-ir writes a value_info entry for every typed initializer; the tensor already
    says its type and shape, and on a model of many small weights the entries grew the
    file by a quarter. Initializers that are also graph inputs keep theirs. Metadata on
    an initializer's value (onnxscript's folder records what a constant was folded from)
    would make onnx-ir write a value_info entry with no type at all: it is left out too.
    """
    saved = []
    for graph in graphs:
        inputs = {id(v) for v in graph.inputs}
        for value in graph.initializers.values():
            if id(value) in inputs:
                continue
            if value.type is not None or value.shape is not None or value.metadata_props:
                saved.append((value, value.type, value.shape, dict(value.metadata_props)))
                value.type, value.shape = None, None
                value.metadata_props.clear()
    try:
        yield
    finally:
        for value, old_type, old_shape, old_meta in saved:
            value.type, value.shape = old_type, old_shape
            value.metadata_props.update(old_meta)


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
    block exits normally the pair is published: the side file is named by its content
    (``OUT.<hash>.data``, a name no current file uses unless it holds the same bytes) and
    moved beside ``path`` first, then ONE rename of the graph publishes the pair, and only
    then is the side file the old ``path`` used removed. An interrupt at any point leaves
    the old pair or the new pair; what it leaves besides (a staging folder, an orphan side
    file) is removed at the start of the next write of ``path``. When the block raises,
    the staging folder is removed and nothing at ``path`` changes.

    Args:
        model: the model to write.
        path: final output path.
        external_data: force weights into a side file (True), inline (False), or decide
            (None): external when the input used it or the weights reach protobuf's
            2 GiB limit.
        write_sparse: write tensors marked by ``store-sparse`` as sparse initializers.
    """
    path = check_output_path(path)
    graphs = model_graphs(model)  # one walk for every question below
    tensors = list(_iter_initializer_tensors(model, graphs))
    external = _external(tensors)
    clean_stale_stages(path, keep=_data_files(external))
    if external_data is None:
        external_data = bool(external) or (
            sum(tensor_nbytes(t) for t in tensors) >= EXTERNAL_DATA_THRESHOLD
        )
    with _stage_folder(path) as stage:
        staged = stage / path.name
        with _no_initializer_value_info(graphs):
            _write_model(model, staged, external_data, write_sparse, tensors)
        data_name = None
        if external_data and (stage / _PAYLOAD).is_file():
            data_name = _data_name(path.name, _file_digest(stage / _PAYLOAD))
            _rename_payload(staged, data_name)
            os.replace(stage / _PAYLOAD, stage / data_name)
        if ir_has_opaque_types(model, graphs):
            restore_opaque_types(staged)
        yield staged
        _publish(stage, staged, path, data_name)


def _publish(stage: Path, staged: Path, path: Path, data_name: str | None) -> None:
    """Move a staged pair into place: side file, then the graph (the one publishing step)."""
    # Parse the old graph only when a side file named for it exists (a big inline
    # model is not read for nothing).
    owned = _owned_data_pattern(path.name)
    has_owned = any(owned.fullmatch(p.name) for p in path.parent.iterdir() if p.name != data_name)
    old_files = referenced_data_files(path) if path.exists() and has_owned else set()
    if data_name is not None:
        _fsync(stage / data_name)
    _fsync(staged)
    if data_name is not None:
        # A new name (content-addressed): the old graph never refers to it.
        os.replace(stage / data_name, path.parent / data_name)
    os.replace(staged, path)
    _fsync(path.parent)
    logger.info("wrote %s", path)
    keep = (path.parent / data_name).resolve() if data_name is not None else None
    for old in old_files:
        # Only side files named for this output: another model may share a foreign one.
        if old != keep and old.parent == path.parent.resolve() and owned.fullmatch(old.name):
            try:
                old.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:  # e.g. still mapped on Windows: harmless, just stale
                logger.warning("could not remove the old side file %s: %s", old, exc)


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
