"""The cache of evaluated candidates: JSON lines in OUTDIR, keyed by what decides the result."""

from __future__ import annotations

__all__ = ["CandidateCache", "file_sha256", "candidate_key"]

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CACHE_NAME = "cache.jsonl"


def file_sha256(path: str | Path | None) -> str | None:
    """sha256 of a file, or of every file under a folder (names and contents), or None."""
    if path is None:
        return None
    p = Path(path)
    digest = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        digest.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def candidate_key(
    input_sha: str, pipeline: str, data_shas: list[str | None], target: str, guard: str | None
) -> str:
    """The cache key: sha256 over the input's hash, pipeline text, data hashes, target, guard."""
    text = json.dumps([input_sha, pipeline, data_shas, target, guard], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class CandidateCache:
    """Evaluated candidates of OUTDIR; appended one JSON line per evaluation."""

    def __init__(self, outdir: Path) -> None:
        self.path = outdir / CACHE_NAME
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    logger.warning("%s:%d: unreadable cache line ignored", self.path, n)

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached record of a key whose model file (when it had one) still exists.

        An ``ok`` record without the modelled latency (written before search.modelled)
        is not an answer: the candidate is evaluated again.
        """
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.get("status") == "ok" and "modelled" not in entry:
            return None
        model = entry.get("model")
        if entry.get("status") == "ok" and model and not Path(model).exists():
            return None
        return entry

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Store a record (with its key) and append it to the file."""
        entry = {**record, "key": key}
        self.entries[key] = entry
        with self.path.open("a") as fh:
            fh.write(json.dumps(entry, sort_keys=True, allow_nan=False) + "\n")
