"""The architecture as a test: floors never import upward and the engine has no import cycle.

Every ``import`` statement is counted, also those inside functions (a lazy import that closes
a circle is still a circle). ``searchspace/``, ``supernet/`` and ``stitching/`` may import only
the engine's ground floor, ``stitchnas.core``; the ground floor imports nothing of the project
outside itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("searchspace", "supernet", "stitching", "stitchnas")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """Project modules ``path`` imports: ``from a.b import c`` counts ``a.b.c`` when that is a
    module, else ``a.b``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return {m for m in found if m.split(".")[0] in PACKAGES}


GRAPH = {name: imported(path, set(modules())) for name, path in modules().items()}


@pytest.mark.parametrize("floor", ["searchspace", "supernet", "stitching"])
def test_lower_floors_import_only_the_ground_floor(floor):
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if m.split(".")[0] == floor
                 for d in deps if d.startswith("stitchnas") and not d.startswith("stitchnas.core"))
    assert not bad, bad


def test_searchspace_imports_no_model_code():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if m.startswith("searchspace")
                 for d in deps if d.split(".")[0] in ("supernet", "stitching", "stitchnas"))
    assert not bad, bad


def test_ground_floor_imports_nothing_above_it():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if m.startswith("stitchnas.core")
                 for d in deps if not d.startswith("stitchnas.core"))
    assert not bad, bad


def test_backends_import_no_pipeline_or_method():
    bad = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if m.startswith("stitchnas.backends")
                 for d in deps if d.startswith(("stitchnas.methods", "stitchnas.search.pipeline", "supernet",
                                                "stitching")))
    assert not bad, bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    # A package's __init__ re-exporting its own modules is not a cycle of concepts: edges from
    # a package to its own sub-modules are left out.
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in GRAPH.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
