"""Train the committed digits CNN on scikit-learn's digits data and export it to ONNX."""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

__all__ = ["DigitsCNN", "load_splits", "train", "export", "heldout_accuracy", "main"]

SEED = 0
OPSET = 17
HERE = pathlib.Path(__file__).resolve().parent


class DigitsCNN(nn.Module):
    """Small VGG-style CNN for 8x8 grey digits: 4 Conv+BN+ReLU, a max pool, 2 Linear."""

    def __init__(self) -> None:
        """Creates the layers."""
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(1, 16),
            *block(16, 32),
            nn.MaxPool2d(2),
            *block(32, 64),
            *block(64, 64),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits [N, 10] for images [N, 1, 8, 8] scaled to [0, 1]."""
        return self.classifier(self.features(x))


def load_splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Loads digits and splits them 80/20, stratified, random_state=0.

    Returns:
        (x_train, x_test, y_train, y_test): images float32 [N, 1, 8, 8] in [0, 1], labels int64.
    """
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=0
    )
    return x_train, x_test, y_train, y_test


def train(
    x_train: np.ndarray, y_train: np.ndarray, *, epochs: int = 40, batch_size: int = 64
) -> DigitsCNN:
    """Trains the CNN with Adam and a cosine learning-rate schedule, with a fixed seed.

    Args:
        x_train: Training images, float32 [N, 1, 8, 8].
        y_train: Training labels, int64 [N].
        epochs: Passes over the training data.
        batch_size: Mini-batch size.

    Returns:
        The trained model, in eval mode.
    """
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    xs = torch.from_numpy(x_train)
    ys = torch.from_numpy(y_train)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(xs), generator=generator)
        for start in range(0, len(xs), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xs[idx]), ys[idx])
            loss.backward()
            optimizer.step()
        scheduler.step()
    return model.eval()


def export(model: DigitsCNN, path: pathlib.Path) -> onnx.ModelProto:
    """Exports the model to a single ONNX file, opset 17, batch axis dynamic, BN kept.

    The TorchScript exporter is used with constant folding off, so that the
    BatchNormalization nodes stay in the graph for the optimizer to fold.

    Args:
        model: The trained model.
        path: Where to write the .onnx file.

    Returns:
        The exported model, as loaded back from ``path``.
    """
    model.eval()
    dummy = torch.zeros(2, 1, 8, 8)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        do_constant_folding=False,
        dynamo=False,
    )
    proto = onnx.load(str(path))
    proto.producer_name = "nnopt-graph models/digits/build.py"
    proto.doc_string = "CNN trained on sklearn digits (8x8, 10 classes); see README.md."
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def heldout_accuracy(path: pathlib.Path, x: np.ndarray, y: np.ndarray) -> float:
    """Measures top-1 accuracy of the ONNX model with onnxruntime on CPU.

    Args:
        path: The .onnx file.
        x: Images, float32 [N, 1, 8, 8].
        y: Labels, int64 [N].

    Returns:
        The fraction of correct predictions.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x})
    return float((logits.argmax(axis=1) == y).mean())


def main(argv: Sequence[str] | None = None) -> int:
    """Trains, exports and writes the committed files; prints the held-out accuracy.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", type=pathlib.Path, default=HERE)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    out_dir: pathlib.Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    x_train, x_test, y_train, y_test = load_splits()
    model = train(x_train, y_train, epochs=args.epochs)
    with torch.no_grad():
        torch_acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())

    onnx_path = out_dir / "digits_cnn.onnx"
    proto = export(model, onnx_path)
    np.savez_compressed(out_dir / "digits_calib.npz", input=x_train)
    np.savez_compressed(out_dir / "digits_heldout.npz", input=x_test)
    np.save(out_dir / "digits_heldout_labels.npy", y_test)

    ort_acc = heldout_accuracy(onnx_path, x_test, y_test)
    ops = sorted({n.op_type for n in proto.graph.node})
    print(f"train={len(x_train)} heldout={len(x_test)} ops={ops}")
    print(f"held-out accuracy: torch={torch_acc:.4f} onnxruntime={ort_acc:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
