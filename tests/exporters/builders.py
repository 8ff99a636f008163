"""Small models from each exporter, written to ONNX files with matching calibration data.

Each builder returns ``(model_path, calib_path)``; the exporters are imported inside the
builders, so importing this module needs none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

SAMPLES = 64


def _images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((SAMPLES, *shape)).astype(np.float32)


def _torch_cnn():  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1, stride=2),
        torch.nn.BatchNorm2d(32),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 10),
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _torch_transformer():  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(
        d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
    )
    return torch.nn.Sequential(torch.nn.TransformerEncoder(layer, num_layers=2)).eval()


def torch_export(tmp: Path, which: str, *, dynamo: bool) -> tuple[Path, Path]:
    """A torch model exported by TorchScript (``dynamo=False``) or dynamo (``dynamo=True``)."""
    import torch

    if which == "cnn":
        model, shape = _torch_cnn(), (3, 16, 16)
    else:
        model, shape = _torch_transformer(), (8, 32)
    data = _images(1, shape)
    path = tmp / f"torch_{'dynamo' if dynamo else 'ts'}_{which}.onnx"
    example = (torch.from_numpy(data[:1]),)
    kwargs: dict[str, object] = {"input_names": ["x"], "output_names": ["y"]}
    if dynamo:
        kwargs["dynamo"] = True
        kwargs["external_data"] = False
    else:
        kwargs["dynamo"] = False
        kwargs["opset_version"] = 17
    torch.onnx.export(model, example, str(path), **kwargs)
    calib = tmp / f"{path.stem}.npz"
    np.savez(calib, x=data.reshape(SAMPLES, 1, *shape))  # whole feeds: batch 1 each
    return path, calib


def keras_cnn(tmp: Path) -> tuple[Path, Path]:
    """A Keras CNN (channels-last) converted by tf2onnx."""
    import tensorflow as tf
    import tf2onnx

    tf.random.set_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((16, 16, 3), name="x"),
            tf.keras.layers.Conv2D(16, 3, padding="same"),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.ReLU(),
            tf.keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(10),
        ]
    )
    spec = (tf.TensorSpec((None, 16, 16, 3), tf.float32, name="x"),)
    path = tmp / "keras_cnn.onnx"
    # tf2onnx 1.17's from_keras cannot read Keras 3 models (KeyError on output names);
    # converting the model's traced call is what its issue tracker suggests.
    call = tf.function(lambda x: model(x, training=False), input_signature=spec)
    tf2onnx.convert.from_function(call, input_signature=spec, opset=17, output_path=str(path))
    import onnx

    name = onnx.load(str(path)).graph.input[0].name
    calib = tmp / "keras_cnn.npz"
    np.savez(calib, **{name: _images(2, (16, 16, 3)).reshape(SAMPLES, 1, 16, 16, 3)})
    return path, calib


def paddle_cnn(tmp: Path) -> tuple[Path, Path]:
    """A Paddle CNN exported by paddle2onnx (``paddle.onnx.export``)."""
    import paddle

    paddle.seed(0)
    model = paddle.nn.Sequential(
        paddle.nn.Conv2D(3, 16, 3, padding=1),
        paddle.nn.BatchNorm2D(16),
        paddle.nn.ReLU(),
        paddle.nn.Conv2D(16, 32, 3, padding=1, stride=2),
        paddle.nn.ReLU(),
        paddle.nn.AdaptiveAvgPool2D(1),
        paddle.nn.Flatten(),
        paddle.nn.Linear(32, 10),
    )
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, 16, 16], "float32", "x")]
    prefix = tmp / "paddle_cnn"
    paddle.onnx.export(model, str(prefix), input_spec=spec, opset_version=13)
    path = tmp / "paddle_cnn.onnx"
    calib = tmp / "paddle_cnn.npz"
    np.savez(calib, x=_images(3, (3, 16, 16)).reshape(SAMPLES, 1, 3, 16, 16))
    return path, calib


def skl_models(tmp: Path) -> dict[str, tuple[Path, Path]]:
    """skl2onnx classifiers on the digits data: ZipMap default, MLP and forest without."""
    import onnx
    import skl2onnx
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    calib = tmp / "digits_flat.npz"
    np.savez(calib, X=x[1200:1400])
    opsets = {"": 17, "ai.onnx.ml": 3}
    made = {}
    for name, est, zipmap in (
        ("logreg-zipmap", LogisticRegression(max_iter=300), True),
        (
            "scaler-mlp",
            make_pipeline(
                StandardScaler(),
                MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0),
            ),
            False,
        ),
        ("forest", RandomForestClassifier(n_estimators=4, max_depth=5, random_state=0), False),
    ):
        est.fit(x[:1200], y[:1200])
        final = est.steps[-1][1] if hasattr(est, "steps") else est
        options = None if zipmap else {type(final): {"zipmap": False}}
        proto = skl2onnx.to_onnx(est, x[:1], options=options, target_opset=opsets)
        path = tmp / f"skl_{name}.onnx"
        onnx.save(proto, path)
        made[name] = (path, calib)
    return made


# (exporter, model) -> builder(tmp) for the heavy exporters.
HEAVY: dict[tuple[str, str], Callable[[Path], tuple[Path, Path]]] = {
    ("torch.onnx (TorchScript)", "cnn+bn"): lambda t: torch_export(t, "cnn", dynamo=False),
    ("torch.onnx (TorchScript)", "transformer-encoder"): lambda t: torch_export(
        t, "transformer", dynamo=False
    ),
    ("torch.onnx (dynamo)", "cnn+bn"): lambda t: torch_export(t, "cnn", dynamo=True),
    ("torch.onnx (dynamo)", "transformer-encoder"): lambda t: torch_export(
        t, "transformer", dynamo=True
    ),
    ("tf2onnx (Keras)", "cnn+bn"): keras_cnn,
    ("paddle2onnx", "cnn+bn"): paddle_cnn,
}


def build_isolated(key: tuple[str, str], tmp: Path, timeout: float = 600) -> tuple[Path, Path]:
    """Run a heavy builder in a child process (torch, TensorFlow and Paddle in one process
    crash each other) and return its ``(model_path, calib_path)``.

    Raises:
        RuntimeError: the exporter failed; its stderr's tail is in the message.
    """
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    code = (
        "import json, sys; from pathlib import Path; "
        "from tests.exporters.builders import HEAVY; "
        f"m, c = HEAVY[({key[0]!r}, {key[1]!r})](Path(sys.argv[1])); "
        "print('\\n' + json.dumps([str(m), str(c)]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=root,
        env={**__import__("os").environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{key[0]} export of {key[1]} failed: {proc.stderr[-2000:]}")
    model, calib = json.loads(proc.stdout.strip().splitlines()[-1])
    return Path(model), Path(calib)
