"""The generated pass catalog is current, and the light commands import no ONNX stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nnopt_graph.pipeline.catalog import (
    CATALOG_PATH,
    build_catalog,
    format_catalog,
    load_catalog,
)

HEAVY = ("onnx", "onnxruntime", "onnx_ir", "onnxscript", "numpy")


def test_catalog_file_is_current():
    # Fails when a pass, option or preset changed without regenerating the file:
    # python -m nnopt_graph.pipeline.catalog
    assert load_catalog() == json.loads(json.dumps(build_catalog())), (
        f"{CATALOG_PATH.name} is stale: run python -m nnopt_graph.pipeline.catalog"
    )


def test_catalog_lists_every_registered_pass_with_typed_options():
    from nnopt_graph.pipeline.registry import registered_passes

    catalog = load_catalog()
    builtin = [
        n for n, c in registered_passes().items() if c.__module__.startswith("nnopt_graph.passes.")
    ]
    assert [p["name"] for p in catalog["passes"]] == builtin
    fold = next(p for p in catalog["passes"] if p["name"] == "fold-constants")
    assert {"name": "max-rounds", "type": "int", "default": 4} in [
        {k: o[k] for k in ("name", "type", "default")} for o in fold["options"]
    ]
    assert "default" in catalog["presets"]


def test_stale_catalog_is_detected(tmp_path):
    catalog = build_catalog()
    catalog["passes"][0]["summary"] = "an old summary"
    stale = tmp_path / "catalog.json"
    stale.write_text(json.dumps(catalog))
    assert load_catalog(stale) != json.loads(json.dumps(build_catalog()))


def test_format_matches_registry_listing():
    from nnopt_graph.pipeline.grammar import PassSpec
    from nnopt_graph.pipeline.registry import registered_passes

    lines = format_catalog(load_catalog())
    for name, cls in registered_passes().items():
        if not cls.__module__.startswith("nnopt_graph.passes."):
            continue  # a test's own pass
        assert any(line.split()[:1] == [name] and cls.summary() in line for line in lines)
        if cls.Options.__dataclass_fields__:
            assert any(line.strip() == str(PassSpec.create(name)) for line in lines)


@pytest.mark.parametrize("argv", [["list-passes"], ["--version"], ["--help"], ["opt", "--help"]])
def test_light_commands_import_no_onnx(argv):
    code = (
        "import sys\n"
        "from nnopt_graph.cli import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(rc)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stdout, run.stdout[-300:]


def test_version_flag_prints_version():
    from nnopt_graph import __version__

    run = subprocess.run(
        [sys.executable, "-m", "nnopt_graph.cli", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0
    assert run.stdout.strip() == f"nnopt-graph {__version__}"


def test_public_api_still_loads_on_use():
    import nnopt_graph

    assert callable(nnopt_graph.optimize)
    assert nnopt_graph.Pipeline.parse("default").passes
    with pytest.raises(AttributeError):
        _ = nnopt_graph.no_such_name


def _run_code(code: str) -> str:
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_default_pipeline_imports_only_its_pass_modules():
    out = _run_code(
        "import sys\n"
        "from nnopt_graph.pipeline.grammar import Pipeline\n"
        "Pipeline.parse('default')\n"
        "print(sorted(m for m in sys.modules if m.startswith('nnopt_graph.passes.')))\n"
    )
    assert "nnopt_graph.passes.sharing.dedup" in out
    assert "nnopt_graph.passes.cleanup.simplify" in out
    for family in ("prune", "quantize", "sparsity"):
        assert f"nnopt_graph.passes.{family}." not in out, out


def test_catalog_names_each_pass_module():
    from nnopt_graph.pipeline.registry import registered_passes

    modules = {p["name"]: p["module"] for p in load_catalog()["passes"]}
    for name, cls in registered_passes().items():
        if cls.__module__.startswith("nnopt_graph.passes."):
            assert modules[name] == cls.__module__


def test_listing_order_does_not_depend_on_what_loaded_first():
    out = _run_code(
        "from nnopt_graph.pipeline.registry import get_pass, pass_names\n"
        "get_pass('cse'); get_pass('quantize-int8')\n"
        "print(pass_names())\n"
    )
    builtin = [p["name"] for p in load_catalog()["passes"]]
    assert out.strip() == str(builtin)


def test_unknown_pass_still_gets_a_suggestion():
    from nnopt_graph.errors import BadInputError
    from nnopt_graph.pipeline.registry import get_pass

    with pytest.raises(BadInputError, match="did you mean 'dedup'"):
        get_pass("dedupe")


def test_registry_reads_the_file_the_catalog_writes():
    from nnopt_graph.pipeline import registry

    assert registry._CATALOG == CATALOG_PATH
