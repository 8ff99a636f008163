"""The pass catalog: pass metadata written to catalog.json, read without importing passes.

``list-passes`` reads the JSON file, so it starts without onnx or ONNX Runtime.
``build_catalog`` derives the same data from the registry; a test fails when the
committed file is stale. Regenerate it with ``python -m nnopt_graph.pipeline.catalog``.
"""

from __future__ import annotations

__all__ = ["CATALOG_PATH", "build_catalog", "format_catalog", "load_catalog", "write_catalog"]

import dataclasses
import json
from pathlib import Path
from typing import Any

CATALOG_PATH = Path(__file__).with_name("catalog.json")


def _jsonable(value: Any) -> Any:
    """A JSON-friendly copy of an option default or metadata value."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def build_catalog() -> dict[str, Any]:
    """Every built-in pass (name, lossy, summary, options, spec text) and every preset.

    Built-in: defined under ``nnopt_graph.passes``; passes a user registers at run time
    (plugins, tests) are not part of the committed catalog.
    """
    from nnopt_graph.pipeline.grammar import PassSpec, describe_options, option_fields
    from nnopt_graph.pipeline.presets import PRESETS
    from nnopt_graph.pipeline.registry import registered_passes

    passes = []
    for name, cls in registered_passes().items():
        if not cls.__module__.startswith("nnopt_graph.passes."):
            continue
        options = []
        for key, field, kind in option_fields(cls):
            default = field.default
            if default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
                default = field.default_factory()
            entry: dict[str, Any] = {
                "name": key,
                "type": getattr(kind, "__name__", str(kind)),
                "default": _jsonable(default),
            }
            entry.update({str(k): _jsonable(v) for k, v in field.metadata.items()})
            options.append(entry)
        passes.append(
            {
                "name": name,
                "module": cls.__module__,
                "lossy": bool(cls.lossy),
                "summary": cls.summary(),
                "options": options,
                "spec": str(PassSpec.create(name)),
                "allowed": describe_options(cls),
            }
        )
    return {"passes": passes, "presets": dict(PRESETS)}


def write_catalog(path: Path = CATALOG_PATH) -> Path:
    """Write the catalog built from the registry to ``path``."""
    path.write_text(json.dumps(build_catalog(), indent=1, sort_keys=False) + "\n")
    return path


def load_catalog(path: Path = CATALOG_PATH) -> dict[str, Any]:
    """The catalog as written by ``write_catalog``."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def format_catalog(catalog: dict[str, Any]) -> list[str]:
    """The lines ``list-passes`` prints: passes (with their options) and presets."""
    passes = catalog["passes"]
    width = max(len(p["name"]) for p in passes)
    lines = ["passes:"]
    for p in passes:
        kind = "lossy   " if p["lossy"] else "lossless"
        lines.append(f"  {p['name']:<{width}}  {kind}  {p['summary']}")
        if p["options"]:
            lines.append(f"  {'':<{width}}            {p['spec']}")
            if p.get("allowed"):
                lines.append(f"  {'':<{width}}            where {p['allowed']}")
    lines.append("presets:")
    lines.extend(f"  {name} = {text}" for name, text in catalog["presets"].items())
    return lines


if __name__ == "__main__":
    write_catalog()
