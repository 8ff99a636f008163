"""The default pipeline's output bytes are unchanged by refactoring (see golden.py)."""

from __future__ import annotations

import json

import golden
import pytest

pytestmark = pytest.mark.realmodels


@pytest.fixture(scope="module")
def recorded():
    data = json.loads(golden.GOLDEN.read_text())
    assert data["versions"] == golden.versions(), (
        "golden hashes were recorded with other library versions: rerun "
        "`python -m tests.e2e.golden --write` and check the diff"
    )
    return data["sha256"]


@pytest.fixture(scope="module")
def model_sources(tmp_path_factory):
    return golden.sources(tmp_path_factory.mktemp("golden"))


def test_every_model_is_covered(recorded, model_sources):
    assert sorted(recorded) == sorted(model_sources)


@pytest.mark.parametrize("key", sorted(json.loads(golden.GOLDEN.read_text())["sha256"]))
def test_default_output_bytes_unchanged(recorded, model_sources, tmp_path, key):
    assert golden.output_sha256(model_sources[key], tmp_path) == recorded[key], key
