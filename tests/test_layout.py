"""The package's shape: no import cycles (counting imports inside functions) and no oversized module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "handsynth"
MAX_LINES = 800


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the handsynth modules it imports anywhere in its body (a package counts as its __init__)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import mod` imports pkg.mod when that is a module, else a name of pkg
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "handsynth.hand1000.fusion" in graph["handsynth.hand1000.trainer"]  # the graph sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_no_module_is_over_800_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module_name(path)} has {lines} lines; split it"


def test_each_method_and_the_shared_parts_have_a_package():
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert {"data", "perception", "training", "hand1000", "twostage", "evaluation"} <= packages


def package_of(module: str) -> str:
    """The package a module belongs to; a module at the top of handsynth is a unit of its own."""
    parts = module.split(".")
    is_package = (PACKAGE.parent.joinpath(*parts) / "__init__.py").is_file()
    if is_package or len(parts) == 2:
        return module
    return ".".join(parts[:-1])


def test_no_two_packages_import_each_other():
    graph = import_graph()
    edges = {(package_of(a), package_of(b)) for a, targets in graph.items() for b in targets}
    edges = {(a, b) for a, b in edges if a != b}
    assert ("handsynth.twostage.outpaint", "handsynth.twostage.data") in edges  # the edges are seen
    both_ways = sorted((a, b) for a, b in edges if (b, a) in edges and a < b)
    assert not both_ways, f"packages that import each other: {both_ways}"


def test_only_the_cli_modules_parse_the_command_line():
    users = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            imported = []
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported = [node.module or ""]
            if "argparse" in imported and path.stem not in ("cli", "cli_options"):
                users.append(module_name(path))
    assert "handsynth.cli" in {module_name(p) for p in PACKAGE.rglob("cli.py")}
    assert not users, f"argparse outside the cli modules: {sorted(set(users))}"


def test_the_two_stage_package_follows_the_papers_stages():
    twostage = PACKAGE / "twostage"
    assert {p.parent.name for p in twostage.glob("*/__init__.py")} == {"data", "handgen", "outpaint"}
    assert not [p.name for p in twostage.rglob("*.py") if p.stem.startswith(("hand_", "outpaint_"))]
