"""The shape of the package (docs/architecture.md): layers that import only downwards, no
import circle, and no class or function past the size a reader takes in at once."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sst"

# Each top-level module or package of sst, by layer: a unit imports only from layers below
# its own (and from itself).
LAYERS = [
    {"files", "command_line", "dist", "lr_schedules", "models", "data"},
    {"sparsity"},
    {"runs"},
    {"config", "engine", "condensed"},
    {"launch", "study"},
    {"train"},
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}
# study reads run folders and configs; it never loads the training stack
FORBIDDEN = {"study": {"engine", "launch", "train"}}
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The sst modules ``name`` imports (anywhere in the file)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    found.add(full)
                elif base != package:  # not a compiled submodule of its own package
                    found.add(base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    files = sources()
    return {name: imports(name, path, set(files)) for name, path in files.items()}


def unit(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_every_unit_has_a_layer():
    units = {unit(m) for m in sources()} - {""}
    assert units <= set(LAYER_OF), f"give {sorted(units - set(LAYER_OF))} a layer in LAYERS"


def test_imports_run_only_downwards():
    upward = []
    for module, targets in graph().items():
        source = unit(module)
        for target in targets:
            other = unit(target)
            if not other or other == source:
                continue
            if LAYER_OF[other] >= LAYER_OF[source] or other in FORBIDDEN.get(source, ()):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not run downwards:\n" + "\n".join(sorted(upward))


def test_no_import_circle_between_modules():
    edges = graph()
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the path, 2 done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges[module]):
            if state[target] == 1:
                return [*path[path.index(target) :], target]
            if state[target] == 0 and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(edges):
        if state[module] == 0:
            cycle = visit(module)
            assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_at_most_six_floors():
    edges = defaultdict(set)
    for module, targets in graph().items():
        for target in targets:
            if unit(target) and unit(target) != unit(module):
                edges[unit(module)].add(unit(target))

    def floor(name: str) -> int:
        return 1 + max((floor(t) for t in edges[name]), default=0)

    assert max(floor(u) for u in LAYER_OF) <= 6


@pytest.mark.parametrize("module", sorted(sources()))
def test_classes_and_functions_stay_small(module):
    path = sources()[module]
    too_long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            limit = MAX_CLASS_LINES
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            limit = MAX_FUNCTION_LINES
        else:
            continue
        lines = node.end_lineno - node.lineno + 1
        if lines > limit:
            too_long.append(f"{node.name}: {lines} lines (at most {limit})")
    assert not too_long, f"{module}: " + "; ".join(too_long)
