"""The package's imports point one way (DESIGN.md section 7): no cycles, and no module
importing a layer above its own.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import``
of a ``pyro_mm`` module, at the top of a file or inside a function, absolute or
relative. Imports under ``if TYPE_CHECKING:`` are left out (they never run). Importing
``pyro_mm.a.b`` also runs ``pyro_mm/a/__init__.py``, so it counts as an import of the
package ``pyro_mm.a`` too, unless the importer is inside that package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pyro_mm"

#: Lowest first. A module may import its own layer or any layer below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("pyro_mm._naming", "pyro_mm._version", "pyro_mm.errors", "pyro_mm.devices",
     "pyro_mm.metrics", "pyro_mm.checkpoint", "pyro_mm.data_checks", "pyro_mm.data_formats",
     "pyro_mm.data_store", "pyro_mm.data_disk", "pyro_mm.batch", "pyro_mm.data",
     "pyro_mm.data_stats",
     "pyro_mm.store_batch",
     "pyro_mm.loading", "pyro_mm.datasets*", "pyro_mm.run_data", "pyro_mm.distributed"),
    ("pyro_mm.distributions", "pyro_mm.networks", "pyro_mm.fusion", "pyro_mm.floors",
     "pyro_mm.model_options", "pyro_mm.sites"),
    ("pyro_mm.params", "pyro_mm.factor_protocol", "pyro_mm.standardization",
     "pyro_mm.label_head", "pyro_mm.models"),
    ("pyro_mm.guides",),
    ("pyro_mm.factors*",),
    ("pyro_mm.result", "pyro_mm.inference", "pyro_mm.imputation", "pyro_mm.monitoring",
     "pyro_mm.elbo", "pyro_mm.optim", "pyro_mm.settings", "pyro_mm.experts_solve",
     "pyro_mm.trainer", "pyro_mm.training"),
    ("pyro_mm.diagnostics*",),
    ("pyro_mm.cli",),
    ("pyro_mm",),
]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """``module name -> file`` for every module of the package (packages by their
    ``__init__``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement that can run (not under ``if TYPE_CHECKING:``)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(module: str, is_package: bool, node, modules) -> set[str]:
    """The package modules ``node`` (in ``module``) imports explicitly."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        return {n for n in names if n in modules}
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base_parts = package[: len(package) - node.level + 1]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base not in modules:
        return set()
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if sub in modules else base)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``module -> modules it imports`` (package modules only), as described above."""
    files = module_files(root)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            for target in _targets(module, is_package, node, files):
                edges.add(target)
                parts = target.split(".")
                for i in range(1, len(parts)):  # parent packages run first
                    parent = ".".join(parts[:i])
                    if not (module == parent or module.startswith(parent + ".")):
                        edges.add(parent)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def layer_of(module: str) -> int | None:
    for index, patterns in enumerate(LAYERS):
        for pattern in patterns:
            if module == pattern or (pattern.endswith("*") and (
                    module == pattern[:-1] or module.startswith(pattern[:-1] + "."))):
                return index
    return None


def test_the_graph_sees_imports_inside_functions_and_relative_ones():
    graph = import_graph()
    assert "pyro_mm.factor_protocol" in graph["pyro_mm.models"]
    assert "pyro_mm.factors" in graph["pyro_mm.cli"]
    assert "pyro_mm.diagnostics" in graph["pyro_mm.cli"]  # through diagnostics.cli
    assert "pyro_mm.factors.base" in graph["pyro_mm.factors.pmrl"]


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_every_module_has_a_layer():
    missing = [m for m in module_files() if layer_of(m) is None]
    assert not missing, f"modules without a layer in tests/test_imports.py: {missing}"


@pytest.mark.parametrize("module", sorted(module_files()))
def test_imports_point_down(module):
    graph = import_graph()
    own = layer_of(module)
    upward = sorted(t for t in graph[module] if (layer_of(t) or 0) > (own or 0))
    assert not upward, (f"{module} (layer {own}) imports a layer above it: "
                        + ", ".join(f"{t} (layer {layer_of(t)})" for t in upward))
