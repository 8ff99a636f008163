"""Model inputs: specs, concrete shapes, generated data, and calibration datasets."""

from __future__ import annotations

__all__ = [
    "MAX_GENERATED_BYTES",
    "Dataset",
    "SampleFile",
    "check_allocation",
    "feed_batch",
    "InputSpec",
    "input_specs",
    "load_dataset",
    "parse_input_shape",
    "random_dataset",
    "resolve_shapes",
]

import dataclasses
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from nnopt_graph.core.opaque_types import describe_type, opaque_type_of
from nnopt_graph.errors import BadInputError
from nnopt_graph.runtime.data_checks import check_dtype, check_shape, scan_values
from nnopt_graph.runtime.data_files import SampleFile, load_npz, load_test_data_sets

logger = logging.getLogger(__name__)

_SHAPE_ARG = re.compile(r"^([^:]+):(\d+(?:,\d+)*)?$")

# Generated inputs larger than this are refused before allocating (override with the
# NNOPT_GRAPH_MAX_GENERATED_BYTES environment variable).
MAX_GENERATED_BYTES = 4 * 2**30


def _size_text(nbytes: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def _generated_limit() -> int:
    text = os.environ.get("NNOPT_GRAPH_MAX_GENERATED_BYTES")
    try:
        return int(text) if text else MAX_GENERATED_BYTES
    except ValueError:
        return MAX_GENERATED_BYTES


def check_allocation(
    what: str, shape: Sequence[int], dtype: np.dtype, limit: int | None = None
) -> int:
    """Refuse, before allocating, an array of ``shape`` larger than the limit; returns its bytes.

    Raises:
        BadInputError: the array would exceed ``limit`` (default: MAX_GENERATED_BYTES);
            the message names it and its size.
    """
    limit = _generated_limit() if limit is None else limit
    nbytes = math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize
    if nbytes > limit:
        raise BadInputError(
            f"{what} of shape {list(shape)} ({np.dtype(dtype)}) would take {_size_text(nbytes)}, "
            f"over the {_size_text(limit)} limit; give --input-shape or --calib DATA"
        )
    return nbytes


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """A graph input: name, numpy dtype, and dims (int, or str/None when dynamic)."""

    name: str
    dtype: np.dtype
    dims: tuple[int | str | None, ...] | None


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (initializers that are also inputs excluded).

    Raises:
        BadInputError: an input is not a tensor (a Map input).
    """
    specs = []
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        opaque = opaque_type_of(value.metadata_props)
        if opaque is not None:
            raise BadInputError(
                f"input '{value.name}' has type {describe_type(opaque)}: nnopt-graph feeds "
                "only tensor inputs (a Map input, e.g. a DictVectorizer's, is not supported)"
            )
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        dims = None
        if value.shape is not None:
            dims = tuple(d if isinstance(d, int) else d.value for d in value.shape)
        specs.append(InputSpec(value.name or "", np.dtype(dtype), dims))
    return specs


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """Parse ``NAME:D0,D1,...`` (an empty list after the colon means a scalar).

    Raises:
        BadInputError: malformed text.
    """
    match = _SHAPE_ARG.match(text)
    if not match:
        raise BadInputError(
            f"bad --input-shape '{text}': expected NAME:D0,D1,... with positive integers"
        )
    dims = [int(d) for d in match.group(2).split(",")] if match.group(2) else []
    if any(d <= 0 for d in dims):
        raise BadInputError(f"bad --input-shape '{text}': dimensions must be positive")
    return match.group(1), dims


def _default_dim(spec: InputSpec, axis: int) -> int:
    rank = len(spec.dims or ())
    if axis == 0:
        return 1
    if rank == 4 and axis >= 2:
        return 224  # image height/width: divisible by 32 for strided backbones
    return 16


def resolve_shapes(
    specs: Sequence[InputSpec],
    overrides: Mapping[str, Sequence[int]] | None = None,
    *,
    warn: bool = True,
) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for every input: user overrides, then static dims, then defaults.

    A named dynamic dim takes one value everywhere it appears (so ``batch`` matches
    across inputs).

    Raises:
        BadInputError: an override names no input or has the wrong rank.
    """
    overrides = dict(overrides or {})
    names = {s.name for s in specs}
    for name in overrides:
        if name not in names:
            raise BadInputError(
                f"--input-shape names '{name}', but the model's inputs are: "
                + ", ".join(sorted(names))
            )
    shapes: dict[str, tuple[int, ...]] = {}
    symbols: dict[str, int] = {}
    for spec in specs:
        if spec.name in overrides:
            dims = list(overrides[spec.name])
            if spec.dims is not None and len(dims) != len(spec.dims):
                raise BadInputError(
                    f"--input-shape for '{spec.name}' has rank {len(dims)}, "
                    f"the model's input has rank {len(spec.dims)}"
                )
            for dim, value in zip(spec.dims or (), dims, strict=False):
                if isinstance(dim, str):
                    symbols.setdefault(dim, value)
            shapes[spec.name] = tuple(dims)
    chosen = []
    for spec in specs:
        if spec.name in shapes:
            continue
        if spec.dims is None:
            raise BadInputError(
                f"input '{spec.name}' has no shape in the model; give --input-shape {spec.name}:..."
            )
        dims = []
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, int) and dim > 0:
                dims.append(dim)
            elif isinstance(dim, str) and dim in symbols:
                dims.append(symbols[dim])
            else:
                value = _default_dim(spec, axis)
                if isinstance(dim, str):
                    symbols[dim] = value
                dims.append(value)
                if axis > 0:
                    chosen.append(f"{spec.name}[{axis}]={value}")
        shapes[spec.name] = tuple(dims)
    if chosen and warn:
        logger.warning(
            "dynamic dimensions set to defaults (%s); use --input-shape to choose",
            ", ".join(chosen),
        )
    return shapes


@dataclasses.dataclass
class Dataset:
    """Samples for each input along axis 0; arrays may be memory-mapped.

    An input listed in ``stacked`` has one more axis than the model's input: each
    sample is a whole feed (for inputs without a batch axis, like recurrent state).
    Other inputs are sliced along their own batch axis; when the model declares that
    axis fixed (``fixed_batch``, e.g. 1 for an exported detector), every feed has
    exactly that many samples, whatever batch size a caller asks for.
    """

    arrays: dict[str, np.ndarray]
    source: str
    stacked: frozenset[str] = frozenset()
    fixed_batch: int | None = None

    @property
    def num_samples(self) -> int:
        """Number of samples (the shortest input's axis 0)."""
        return min((len(a) for a in self.arrays.values()), default=0)

    def _with(self, arrays: dict[str, np.ndarray], source: str) -> Dataset:
        return Dataset(arrays, source, self.stacked, self.fixed_batch)

    def fit(self, specs: Sequence[InputSpec]) -> Dataset:
        """This dataset with the feed batch the model declares (see ``feed_batch``).

        Raises:
            BadInputError: sliced inputs whose declared batch dims disagree.
        """
        fixed = feed_batch(specs, self, None)
        if fixed == self.fixed_batch:
            return self
        return Dataset(self.arrays, self.source, self.stacked, fixed)

    def feed_count(self, batch_size: int = 1) -> int:
        """How many feeds ``batches(batch_size)`` yields."""
        step = self._step(batch_size)
        n = self.num_samples
        return n // step if self._exact(step) else -(-n // step)

    def _step(self, batch_size: int) -> int:
        if self.stacked:
            return 1
        return self.fixed_batch or max(1, batch_size)

    def _exact(self, step: int) -> bool:
        return self.fixed_batch is not None and step > 1

    def split(self, eval_fraction: float = 0.2) -> tuple[Dataset, Dataset]:
        """(calibration, held-out): the last ``eval_fraction`` is held out."""
        n = self.num_samples
        # At least one sample on each side once there are two.
        cut = min(n - 1, max(1, int(round(n * (1 - eval_fraction))))) if n > 1 else n
        head = {k: v[:cut] for k, v in self.arrays.items()}
        tail = {k: v[cut:] for k, v in self.arrays.items()}
        return self._with(head, self.source + "[calib]"), self._with(tail, self.source + "[eval]")

    def take(self, count: int) -> Dataset:
        """The first ``count`` samples."""
        return self._with({k: v[:count] for k, v in self.arrays.items()}, self.source)

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of ``batch_size`` samples, read lazily.

        One sample per feed when any input is stacked; ``fixed_batch`` samples when the
        model fixes its batch axis (a trailing incomplete batch is then left out).
        """
        step = self._step(batch_size)
        stop = self.num_samples
        if self._exact(step):
            stop -= stop % step
        for start in range(0, stop, step):
            yield {
                k: np.ascontiguousarray(v[start] if k in self.stacked else v[start : start + step])
                for k, v in self.arrays.items()
            }


def random_dataset(
    specs: Sequence[InputSpec],
    shapes: Mapping[str, Sequence[int]],
    num_samples: int = 4,
    seed: int = 0,
    fixed: Mapping[str, np.ndarray] | None = None,
) -> Dataset:
    """Seeded random samples: floats ~ N(0, 1), integers in [0, 2), bools random.

    Integer inputs are kept in {0, 1} so indices and masks stay valid for any model.
    Every input is stacked: each sample is a whole feed of the resolved shape.
    """
    limit = _generated_limit()
    total = 0
    for spec in specs:
        shape = (num_samples, *shapes[spec.name])
        total += check_allocation(f"random data for input '{spec.name}'", shape, spec.dtype, limit)
        if total > limit:
            raise BadInputError(
                f"random data for the inputs would take {_size_text(total)}, over the "
                f"{_size_text(limit)} limit; give --input-shape or --calib DATA"
            )
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = (num_samples, *shapes[spec.name])
        if fixed and spec.name in fixed:
            arrays[spec.name] = np.broadcast_to(
                np.asarray(fixed[spec.name], dtype=spec.dtype), shape
            ).copy()
        elif np.issubdtype(spec.dtype, np.floating):
            arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            arrays[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(spec.dtype, np.integer):
            arrays[spec.name] = rng.integers(0, 2, shape).astype(spec.dtype)
        else:
            raise BadInputError(
                f"cannot generate data for input '{spec.name}' of type {spec.dtype}; "
                "pass --calib DATA"
            )
    return Dataset(arrays, "random", frozenset(arrays))


def feed_batch(
    specs: Sequence[InputSpec], dataset: Dataset, preferred: int | None = 8
) -> int | None:
    """The number of samples per feed a model accepts for ``dataset``.

    Stacked inputs give one whole feed per sample (1). Inputs sliced along axis 0 take
    the model's declared axis-0 size when it is a fixed number (a batch-1 detector
    takes 1); a dynamic axis 0 takes ``preferred``.

    Args:
        specs: The model's inputs.
        dataset: The data to feed.
        preferred: Batch for a dynamic batch axis (None: the caller's choice).

    Returns:
        Samples per feed, or ``preferred`` when the model leaves it open.

    Raises:
        BadInputError: sliced inputs whose declared batch sizes disagree.
    """
    if dataset.stacked:
        return 1
    fixed = set()
    for spec in specs:
        if spec.name not in dataset.arrays or not spec.dims:
            continue
        dim = spec.dims[0]
        if isinstance(dim, int) and dim > 0:
            fixed.add(dim)
    if len(fixed) > 1:
        raise BadInputError(
            f"{dataset.source}: inputs sliced along axis 0 declare different batch sizes "
            f"{sorted(fixed)}; give rank+1 arrays to stack whole feeds"
        )
    if fixed:
        return fixed.pop()
    return preferred


class _Converted:
    """A lazily converting view: slices are cast when read, the whole array never is."""

    def __init__(self, array: np.ndarray, dtype: np.dtype) -> None:
        self.array = array
        self.dtype = np.dtype(dtype)
        self.ndim = array.ndim
        self.shape = array.shape

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, key: object) -> np.ndarray:
        return np.asarray(self.array[key]).astype(self.dtype)  # type: ignore[call-overload]


def load_dataset(path: str | Path, specs: Sequence[InputSpec]) -> Dataset:
    """Read an ``.npz`` (one array per input, axis 0 = samples) or test_data_set folder.

    Raises:
        BadInputError: missing file, unreadable data, or inputs that do not match.
    """
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: no such file or folder")
    arrays = load_test_data_sets(path, specs) if path.is_dir() else load_npz(path)
    names = {s.name for s in specs}
    missing = names - set(arrays)
    if missing:
        raise BadInputError(f"{path}: no data for input(s) {', '.join(sorted(missing))}")
    extra = set(arrays) - names
    if extra:
        logger.warning("%s: ignoring arrays that name no input: %s", path, ", ".join(sorted(extra)))
    selected = {}
    stacked = set()
    for spec in specs:
        array = arrays[spec.name]
        check_dtype(path, spec, array.dtype)
        rank = len(spec.dims) if spec.dims is not None else array.ndim
        if array.ndim == rank + 1:
            stacked.add(spec.name)
        elif array.ndim != rank or rank == 0:
            raise BadInputError(
                f"{path}: array '{spec.name}' has rank {array.ndim}; the input has rank "
                f"{rank} (give rank {rank + 1} to stack whole samples on axis 0)"
            )
        check_shape(path, spec, tuple(array.shape), spec.name in stacked)
        selected[spec.name] = array
    lengths = {len(a) for a in selected.values()}
    if len(lengths) > 1:
        raise BadInputError(f"{path}: inputs have different sample counts {sorted(lengths)}")
    if not lengths or lengths == {0}:
        raise BadInputError(f"{path}: no samples (axis 0 of the arrays has length 0)")
    for spec in specs:
        scan_values(path, spec.name, selected[spec.name], spec.dtype)
        if selected[spec.name].dtype != spec.dtype:
            logger.warning(
                "%s: input '%s' converted from %s to %s",
                path,
                spec.name,
                selected[spec.name].dtype,
                spec.dtype,
            )
            selected[spec.name] = _Converted(selected[spec.name], spec.dtype)  # type: ignore[assignment]
    dataset = Dataset(selected, str(path), frozenset(stacked)).fit(specs)
    step = dataset.fixed_batch or 1
    if step > 1 and dataset.num_samples % step:
        logger.warning(
            "%s: %d samples is not a multiple of the model's fixed batch %d; the last %d "
            "are not used",
            path,
            dataset.num_samples,
            step,
            dataset.num_samples % step,
        )
    if dataset.num_samples < step:
        raise BadInputError(
            f"{path}: {dataset.num_samples} samples, fewer than the model's fixed batch {step}"
        )
    return dataset
