"""Experiment tracking: TensorBoard event files and W&B offline runs, read back."""

from __future__ import annotations

from pathlib import Path

import pytest

from nnopt_graph.errors import BadInputError
from nnopt_graph.tracking import TrackingSpec, log_run, parse_log_spec
from tests.conftest import run_cli

DIGITS = Path(__file__).resolve().parents[1] / "models" / "digits"

REPORT = {
    "input": {"size_bytes": 20000, "params": 5000, "nodes": 12, "flops": 100000},
    "output": {"size_bytes": 6000, "params": 4000, "nodes": 9, "flops": 80000},
    "pipeline": "fold-constants,prune-channels",
    "passes": [
        {"name": "fold-constants", "modified": True, "seconds": 0.25, "stats": {}},
        {
            "name": "prune-channels",
            "modified": True,
            "seconds": 1.5,
            "stats": {},
            "fidelity": {"values": {"cosine": 0.9991}},
            "decisions": [{"layer": "conv1", "ratio": 0.25}, {"layer": "conv2", "ratio": 0.0}],
        },
    ],
    "fidelity": {"samples": 4, "worst": {"cosine": 0.9991, "rel_l2": 0.04}},
    "seconds": 2.0,
}


def test_parse_log_spec():
    assert parse_log_spec("tensorboard:runs/a") == TrackingSpec("tensorboard", "runs/a")
    assert parse_log_spec("wandb") == TrackingSpec("wandb", "nnopt-graph")
    assert parse_log_spec("wandb:proj") == TrackingSpec("wandb", "proj")


@pytest.mark.parametrize("text", ["tensorboard", "tensorboard:", "mlflow:x", "wand"])
def test_bad_log_spec_is_bad_input(text):
    with pytest.raises(BadInputError, match="--log"):
        parse_log_spec(text)


def test_cli_bad_log_spec_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "o.onnx"
    proc = run_cli("opt", DIGITS / "digits_cnn.onnx", out, "--log", "mlflow:x")
    assert proc.returncode == 2 and "--log" in proc.stderr and not out.exists()


def test_tensorboard_event_file_reads_back(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator as accumulator

    folder = log_run(REPORT, f"tensorboard:{tmp_path / 'tb'}")
    acc = accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    assert scalars["pass/seconds"] == [(1, 0.25), (2, 1.5)]
    assert scalars["model/output_size_bytes"] == [(0, 6000.0)]
    assert scalars["pass/fidelity_cosine"][0][0] == 2
    assert scalars["pass/fidelity_cosine"][0][1] == pytest.approx(0.9991)
    assert scalars["fidelity/rel_l2"][0][1] == pytest.approx(0.04)
    texts = {t: acc.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in tags["tensors"]}
    decisions = next(v for k, v in texts.items() if k.startswith("decisions"))
    assert "conv1" in decisions and "0.25" in decisions
    assert any("prune-channels" in v for k, v in texts.items() if k.startswith("report"))


def _wandb_records(path: Path) -> list[bytes]:
    """Records of a W&B run file: a 7-byte header, then a LevelDB-style log of 32 KiB blocks
    (record header: crc32, length, type 1 full / 2 first / 3 middle / 4 last)."""
    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    records, pos, partial = [], 7, b""
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        length = int.from_bytes(raw[pos + 4 : pos + 6], "little")
        kind = raw[pos + 6]
        body = raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        partial = body if kind in (1, 2) else partial + body
        if kind in (1, 4):
            records.append(partial)
    return records


def test_wandb_offline_run_reads_back(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    folder = log_run(REPORT, "wandb:nnopt-test")
    assert folder.name.startswith("offline-run-")
    from wandb.proto import wandb_internal_pb2

    history, artifacts = [], []
    for data in _wandb_records(next(folder.glob("*.wandb"))):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(
                {i.key or "/".join(i.nested_key): i.value_json for i in record.history.item}
            )
        elif kind == "artifact":
            artifacts.append(record.artifact.name)
    assert (folder / "files" / "media" / "table").is_dir()
    seconds = [h["pass/seconds"] for h in history if "pass/seconds" in h]
    assert seconds == ["0.25", "1.5"]
    assert any(key.startswith("decisions/") for h in history for key in h)
    assert "run-" in "".join(artifacts) and any(a.endswith("-decisions") for a in artifacts)
    assert "nnopt-graph-report" in artifacts
