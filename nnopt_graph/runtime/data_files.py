"""Reading sample files: .npz (uncompressed members read per slice) and test_data_set folders.

Nothing here is unpickled: object arrays are refused by numpy's reader.
"""

from __future__ import annotations

__all__ = ["SampleFile", "load_npz", "load_test_data_sets"]

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from nnopt_graph.errors import BadInputError


def _memmap_member(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> np.ndarray | None:
    """Memory-map an uncompressed .npy member of an .npz, or None when it cannot be."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            return None
        header_len = member.tell()
    if dtype.hasobject:
        return None
    with open(path, "rb") as raw:
        raw.seek(info.header_offset)
        local = raw.read(30)
    # Local file header: 30 fixed bytes, then the name and the extra field.
    name_len = int.from_bytes(local[26:28], "little")
    extra_len = int.from_bytes(local[28:30], "little")
    offset = info.header_offset + 30 + name_len + extra_len + header_len
    if fortran or not shape:
        return np.memmap(
            path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
        )
    return SampleFile(path, offset, dtype, tuple(shape))  # type: ignore[return-value]


class SampleFile:
    """Samples of a C-order array stored raw in a file, read per slice of axis 0.

    Unlike a memory map, pages read for one batch are not kept mapped afterwards, so
    the resident memory of a calibration run does not grow with the file's size.
    """

    def __init__(self, path: Path, offset: int, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        self.path = path
        self.offset = offset
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.ndim = len(shape)
        self.sample_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            index = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= index < len(self):
                raise IndexError(key)
            return self[index : index + 1][0]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("SampleFile supports integers and contiguous slices of axis 0")
        start, stop, _ = key.indices(len(self))
        count = max(stop - start, 0)
        with open(self.path, "rb") as handle:
            handle.seek(self.offset + start * self.sample_bytes)
            data = handle.read(count * self.sample_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((count, *self.shape[1:])).copy()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz, uncompressed members read lazily per batch.

    Memory then stays bounded for any number of samples.
    """
    try:
        arrays: dict[str, np.ndarray] = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[: -len(".npy")]
                mapped = _memmap_member(path, archive, info)
                if mapped is None:
                    with archive.open(info) as member:
                        mapped = np.lib.format.read_array(member, allow_pickle=False)
                arrays[name] = mapped
        return arrays
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BadInputError(f"{path}: not a readable .npz file ({exc})") from exc


def load_test_data_sets(path: Path, specs: Sequence[Any]) -> dict[str, np.ndarray]:
    """One array per input of a test_data_set_* folder tree, sets stacked on axis 0.

    ``specs`` (InputSpec) name the inputs of TensorProtos that carry no name.
    """
    sets = sorted(p for p in path.iterdir() if p.is_dir() and p.name.startswith("test_data_set_"))
    if not sets:
        sets = [path] if any(path.glob("input_*.pb")) else []
    if not sets:
        raise BadInputError(f"{path}: no test_data_set_* folders or input_*.pb files")
    per_input: dict[str, list[np.ndarray]] = {}
    for folder in sets:
        files = sorted(folder.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[-1]))
        for index, file in enumerate(files):
            tensor = onnx.TensorProto()
            try:
                tensor.ParseFromString(file.read_bytes())
            except Exception as exc:
                raise BadInputError(f"{file}: not a TensorProto ({exc})") from exc
            name = tensor.name or (specs[index].name if index < len(specs) else f"input_{index}")
            per_input.setdefault(name, []).append(numpy_helper.to_array(tensor))
    # Each test_data_set is one whole feed: stack them as samples on a new axis 0.
    try:
        return {k: np.stack(v) for k, v in per_input.items()}
    except ValueError as exc:
        raise BadInputError(f"{path}: test data sets differ in shape ({exc})") from exc
