"""The design's promises about the code's shape, checked on the source (no module is executed).

1. Calls go one way, down the layers: no segflow module imports from a layer above its own,
   and no two packages import each other (directly or round a loop).
2. pipelines/ holds no logic: each stage script is ``run_stage(main)`` around one stage module.
3. dvc.yaml's code deps are complete: every segflow file a stage's script imports, directly or
   through other segflow modules (lazy imports inside functions included), is a dependency of
   that stage, so changing it re-runs the stage.

Imports are read with ``ast`` from every ``import`` statement, wherever it sits, so an import
inside a function (how segflow defers heavy libraries) counts like one at the top.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "segflow"

#: The layers, lowest first. A module belongs to the first unit that prefixes its name; a unit
#: may import from its own layer and any layer below, never from one above.
LAYERS: list[tuple[str, ...]] = [
    # the foundation: the params schema (with the one CRF schema it validates against),
    # errors, atomic files, paths, logging, the train stage's run record
    (
        "segflow",  # the package's __init__: a docstring
        "segflow.errors",
        "segflow.io",
        "segflow.paths",
        "segflow.logs",
        "segflow.postprocess.crf_params",
        "segflow.config",
        "segflow.run_info",
    ),
    # the services segflow talks to: MLflow, Ray and object storage
    ("segflow.tracking", "segflow.raycluster", "segflow.storage"),
    # data, networks and post-processing of their outputs
    ("segflow.data", "segflow.models", "segflow.postprocess"),
    # training and evaluation
    ("segflow.train", "segflow.evaluate"),
    # what is built on training and evaluation (deploy: export and batch prediction;
    # baselines: trained here, scored by evaluate)
    ("segflow.lifecycle", "segflow.tune", "segflow.search", "segflow.deploy", "segflow.baselines"),
    # the application layer: one module per DVC stage; presets for `segflow init`
    ("segflow.stages", "segflow.presets"),
    # the command line
    ("segflow.cli",),
]
UNITS = [unit for layer in LAYERS for unit in layer]
LAYER_OF = {unit: n for n, layer in enumerate(LAYERS) for unit in layer}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def unit_of(module: str) -> str:
    # the longest unit that is the module or a package above it ("segflow" only itself)
    matches = [u for u in UNITS if module == u or (u != "segflow" and module.startswith(u + "."))]
    if not matches:
        raise AssertionError(f"{module}: not in any layer of tests/test_layers.py; add it")
    return max(matches, key=len)


def imported_modules(module: str) -> set[str]:
    """The segflow modules ``module`` imports (resolved to files that exist).

    A string that names a segflow module counts too: that is how a module imported by name
    (``importlib.import_module``, e.g. the dataset adapters) shows in the source.
    """
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in MODULES and node.value.startswith("segflow."):
                names = [node.value]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: None if is_package else -1]
                parent = parent[: len(parent) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            # "from a import b": b is a module (a/b.py) or a name in a
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("segflow"):
                found.add(name)
    found.discard(module)
    return found


def executed_modules(module: str) -> set[str]:
    """``module`` and the packages above it: importing a.b.c runs a/__init__ and a/b/__init__."""
    parts = module.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))} & set(MODULES)


def test_every_module_is_in_a_layer():
    for module in MODULES:
        unit_of(module)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for module in MODULES:
        own = LAYER_OF[unit_of(module)]
        for target in imported_modules(module):
            if LAYER_OF[unit_of(target)] > own:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that go up the layers:\n" + "\n".join(sorted(upward))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_two_packages_import_each_other():
    graph: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        for target in imported_modules(module):
            if unit_of(target) != unit_of(module):
                graph[unit_of(module)].add(unit_of(target))
    assert _cycles(graph) == []


def test_within_a_package_the_only_import_cycle_is_the_model_registry():
    # models/registry.py imports the architecture modules so that their @register_model runs;
    # they import the decorator from it. timm's registry has the same shape.
    graph: dict[str, set[str]] = defaultdict(set)
    for module in MODULES:
        for target in imported_modules(module):
            if unit_of(target) == unit_of(module):
                graph[module].add(target)
    cycles = _cycles(graph)
    assert all("segflow.models.registry" in c for c in cycles), cycles
    assert all(all(m.startswith("segflow.models") for m in c) for c in cycles), cycles


# -- pipelines/ --------------------------------------------------------------------------------

STAGE_SCRIPTS = sorted(p for p in (REPO / "pipelines").glob("*.py"))


@pytest.mark.parametrize("script", STAGE_SCRIPTS, ids=lambda p: p.name)
def test_a_stage_script_is_a_docstring_two_imports_and_one_call(script):
    tree = ast.parse(script.read_text())
    body = tree.body
    assert ast.get_docstring(tree), f"{script.name}: says what the stage reads and writes"
    imports = [n for n in body if isinstance(n, ast.ImportFrom | ast.Import)]
    assert all(
        isinstance(n, ast.Import) and n.names[0].name == "sys" or n.module.startswith("segflow")
        for n in imports
    )
    rest = [n for n in body[1:] if n not in imports]
    assert len(rest) == 1 and isinstance(rest[0], ast.If), f"{script.name}: only the main guard"
    assert len(rest[0].body) == 1, f"{script.name}: one call under the main guard"


# -- dvc.yaml's deps ---------------------------------------------------------------------------


def import_closure(script: Path) -> set[Path]:
    """Every segflow file that running ``script`` can import, relative to the repository."""
    todo: list[str] = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("segflow"):
            todo += [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            todo += [a.name for a in node.names if a.name.startswith("segflow")]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        for module in executed_modules(name) - seen:
            seen.add(module)
            todo += sorted(imported_modules(module))
    return {MODULES[m].relative_to(REPO) for m in seen}


def stage_scripts() -> dict[str, tuple[Path, list[str]]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in stages.items():
        match = re.fullmatch(r"python (pipelines/\w+\.py)", stage["cmd"].strip())
        assert match, f"dvc.yaml: stage {name}: cmd is not 'python pipelines/<stage>.py'"
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]
        out[name] = (Path(match[1]), deps)
    return out


def test_every_pipelines_script_is_a_dvc_stage():
    scripts = {script for script, _ in stage_scripts().values()}
    assert {p.relative_to(REPO) for p in STAGE_SCRIPTS} - scripts == {Path("pipelines/retrain.py")}


@pytest.mark.parametrize("stage", sorted(stage_scripts()))
def test_dvc_deps_cover_every_segflow_file_the_stage_imports(stage):
    script, deps = stage_scripts()[stage]
    assert str(script) in deps, f"dvc.yaml: stage {stage} does not depend on its own script"
    covered = [Path(d) for d in deps]
    missing = sorted(
        str(f)
        for f in import_closure(REPO / script)
        if not any(f == d or d in f.parents for d in covered)
    )
    assert not missing, f"dvc.yaml: stage {stage} misses deps on:\n  - " + "\n  - ".join(missing)


def test_no_module_imports_another_modules_private_names():
    # A leading underscore says "not part of this module's interface"; a caller elsewhere
    # that needs it means the interface is missing something (e.g. the loader's worker set-up).
    private = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("segflow"):
                names = [a.name for a in node.names if a.name.startswith("_")]
                private += [f"{module}: from {node.module} import {n}" for n in names]
    assert not private, "\n".join(private)
