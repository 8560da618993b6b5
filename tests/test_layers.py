"""The layout keeps its shape: imports run down the layers and never in a circle (README, Architecture)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedsynth"
LAYERS = ["data", "privacy", "generators", "classifier", "evaluation", "client", "server", "simulation",
          "webapp", "deploy", "cli"]
GROUND = {"config", "errors", "rundir", "metrics_schema", "torch_utils", "progress", "logging_setup", "presentation"}


def _runtime_nodes(tree: ast.AST):
    """Every node but those under ``if TYPE_CHECKING:`` (imports for annotations only run nowhere)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports() -> dict[str, set[str]]:
    """Module -> the fedsynth modules it imports (at the top or lazily inside a function)."""
    out: dict[str, set[str]] = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        mod = ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        deps = set()
        for node in _runtime_nodes(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("fedsynth.")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("fedsynth."):
                deps.add(node.module)
        out[mod] = deps
    return out


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_no_import_runs_up_a_layer():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = [f"{mod} imports {dep}" for mod, deps in _imports().items() for dep in deps
              if _top(mod) in rank and _top(dep) in rank and rank[_top(dep)] > rank[_top(mod)]]
    assert upward == []


@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_ground_floor_imports_no_layer():
    ground = [f"{mod} imports {dep}" for mod, deps in _imports().items() if _top(mod) in GROUND
              for dep in deps if _top(dep) in LAYERS]
    assert ground == []


@pytest.mark.slow  # over 1 s: outside the quick subset
def test_the_client_and_the_server_never_import_each_other():
    crossing = [f"{mod} imports {dep}" for mod, deps in _imports().items() for dep in deps
                if {_top(mod), _top(dep)} == {"client", "server"}]
    assert crossing == []


@pytest.mark.slow  # over 0.6 s: outside the quick subset
def test_no_import_circle():
    graph = _imports()

    def resolve(dep: str) -> str | None:
        while dep and dep not in graph:
            dep = dep.rpartition(".")[0]
        return dep or None

    edges = {m: {r for d in deps if (r := resolve(d)) and r != m} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert circles == []
