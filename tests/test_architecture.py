"""The import graph of pipeline/: no cycle, layers imported only downwards, torch-free config,
and dvc.yaml stage deps that cover every module a stage imports (so no edit leaves a stale
output that `dvc repro` would not rebuild)."""

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
# Lowest first; a module may import its own layer and the ones below (README "Code map").
LAYERS = [
    ["pipeline.errors", "pipeline.io", "pipeline.paths", "pipeline.quiet", "pipeline.warm"],
    ["pipeline.config", "pipeline.meta"],
    ["pipeline.models"],
    [
        "pipeline.data",
        "pipeline.inference",
        "pipeline.tracking",
        "pipeline.ray_cluster",
        "pipeline.registry",
    ],  # fmt: skip
    ["pipeline.plots", "pipeline.tasks", "pipeline.evaluation", "pipeline.checkpoint"],
    ["pipeline.training"],
    ["pipeline.export"],
    [
        "pipeline.export.validate",
        "pipeline.release",
        "pipeline.predict",
        "pipeline.tuning",
        "pipeline.repro",
    ],
    ["pipeline.cli", "pipeline.__main__"],
]
STAGE_ENTRIES = {  # (pipeline file, stage) -> the module of its stage function
    ("dvc.yaml", "prepare"): "pipeline.data.prepare",
    ("dvc.yaml", "train"): "pipeline.training.train",
    ("dvc.yaml", "export"): "pipeline.export.onnx_export",
    ("dvc.yaml", "validate"): "pipeline.export.validate",
    ("pipelines/tune/dvc.yaml", "tune"): "pipeline.tuning.sweep",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


@cache
def imports(name: str) -> frozenset[str]:
    """Every pipeline module `name` imports, at module level or inside a function, with the
    packages whose __init__ that runs (but not `name`'s own packages, already running)."""
    found = set()
    for node in ast.walk(ast.parse(modules()[name].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    own = {name, *(p for p in found if name.startswith(p + "."))}
    return frozenset(m for m in found if m in modules() and m not in own)


def layer(name: str) -> int:
    best = max(
        (prefix, i)
        for i, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if name == prefix or name.startswith(prefix + ".")
    )
    return best[1]


def test_every_module_has_a_layer():
    assert all(layer(m) >= 0 for m in modules() if m != "pipeline")


def test_imports_only_go_down_the_layers():
    upward = [
        f"{m} (layer {layer(m)}) imports {i} (layer {layer(i)})"
        for m in modules()
        if m != "pipeline"
        for i in imports(m)
        if i != "pipeline" and layer(i) > layer(m)
    ]
    assert not upward, upward


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(imports(name)):
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(modules()):
        if name not in state:
            visit(name, [name])


def test_training_never_imports_tuning_and_export_never_the_train_stage():
    for name in modules():
        if name.startswith("pipeline.training"):
            assert not any(i.startswith("pipeline.tuning") for i in imports(name)), name
        if name.startswith("pipeline.export"):
            assert "pipeline.training.train" not in imports(name), name


# What a module must not load: each stage process starts with only what it runs.
NOT_LOADED = {
    "pipeline.config": ["torch"],
    "pipeline.meta": ["torch"],
    "pipeline.tasks": ["torch"],
    "pipeline.evaluation": ["torch"],
    "pipeline.data.prepare": ["torch"],
    "pipeline.predict": ["torch"],
    "pipeline.export.onnx_export": ["pytorch_lightning", "mlflow"],
    "pipeline.export.validate": ["pytorch_lightning"],
}


@pytest.mark.parametrize("name", sorted(NOT_LOADED))
def test_stage_modules_load_only_what_they_run(name):
    code = f"import sys, {name}; print([m for m in {NOT_LOADED[name]} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def closure(name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imports(m)
    return seen


@pytest.mark.parametrize("where", sorted(STAGE_ENTRIES), ids=lambda w: w[1])
def test_stage_deps_cover_every_module_the_stage_imports(where):
    file, stage = where
    deps = yaml.safe_load((REPO / file).read_text())["stages"][stage]["do"]["deps"]
    code = [d for d in deps if d.startswith("pipeline")]
    files = {modules()[m].relative_to(REPO).as_posix() for m in closure(STAGE_ENTRIES[where])}
    uncovered = sorted(
        f for f in files if f != "pipeline/__init__.py" and not any(
            f == d or f.startswith(d.rstrip("/") + "/") for d in code
        )
    )  # fmt: skip
    assert not uncovered, f"dvc.yaml {stage} deps miss {uncovered}"


def test_tune_apply_print_loads_neither_torch_nor_ray():
    code = (
        "import sys, pipeline.cli, pipeline.tuning.apply; "
        "sys.exit('torch' in sys.modules or 'ray' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
