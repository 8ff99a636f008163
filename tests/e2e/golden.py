"""Golden sha256 of the default pipeline's output on every zoo model, the digits CNN and
the real models: a refactoring that changes an output's bytes must say which pass and why.

Run ``python -m tests.e2e.golden --write`` to record new hashes (and say why in the commit).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from importlib import metadata
from pathlib import Path

import onnx

from models import fetch, zoo

GOLDEN = Path(__file__).with_name("golden_sha256.json")
# The hashes hold for these library versions: serialization and folding may differ in others.
VERSIONED = ("onnx", "onnx-ir", "onnxscript", "numpy")


def versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour the hashes depend on."""
    return {name: metadata.version(name) for name in VERSIONED}


def sources(tmp: Path) -> dict[str, Path]:
    """Every model the golden file covers, by key."""
    out: dict[str, Path] = {}
    for name in sorted(zoo.ZOO):
        path = tmp / f"{name}.onnx"
        onnx.save(zoo.ZOO[name](), path)
        out[f"zoo:{name}"] = path
    out["digits"] = Path("models/digits/digits_cnn.onnx")
    for name, path in sorted(fetch.fetch_all().items()):
        out[f"real:{name}"] = path
    return out


def output_sha256(source: Path, tmp: Path) -> str:
    """sha256 of the default pipeline's output file for one model (verification off)."""
    from nnopt_graph import optimize

    out = tmp / "golden-out.onnx"
    optimize(source, out, check=False)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return digest


def main() -> None:
    """Print or write the golden hashes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hashes = {key: output_sha256(p, Path(tmp)) for key, p in sources(Path(tmp)).items()}
    data = {"versions": versions(), "sha256": hashes}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    if args.write:
        GOLDEN.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
