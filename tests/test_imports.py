"""The package's imports point one way (the layer order of README.md's "Layout"
section): no cycles, and no module importing a layer above its own.

The graph is read from the source with ``ast``: every ``import`` and ``from ... import``
of a ``pyro_mm`` module, at the top of a file or inside a function, absolute or
relative, and under ``if TYPE_CHECKING:`` too: an annotation that needs a module above
is a dependency on it all the same, only hidden. Importing
``pyro_mm.a.b`` also runs ``pyro_mm/a/__init__.py``, so it counts as an import of the
package ``pyro_mm.a`` too, unless the importer is inside that package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "pyro_mm"

#: The layers, lowest first: the package's subpackages, in the order of README.md's
#: "Layout" section. A module may import its own layer or any layer below, never above.
LAYERS: list[tuple[str, ...]] = [
    ("pyro_mm.errors", "pyro_mm._version"),
    ("pyro_mm.data*",),
    ("pyro_mm.datasets*",),
    ("pyro_mm.runtime*",),
    ("pyro_mm.model*",),
    ("pyro_mm.factors*",),
    ("pyro_mm.runs*",),
    ("pyro_mm.predictive*",),
    ("pyro_mm.train*",),
    ("pyro_mm.diagnostics*",),
    ("pyro_mm.cli*",),
    ("pyro_mm",),
]

#: Inside :mod:`pyro_mm.model`, lowest first: its parts, then what combines them, then
#: the mixture, then the guide, then any posterior (guide or samples) on top.
MODEL_LAYERS: list[tuple[str, ...]] = [
    ("pyro_mm.model._pyro_module", "pyro_mm.model.distributions", "pyro_mm.model.networks",
     "pyro_mm.model.sites", "pyro_mm.model.scale_floors", "pyro_mm.model.legacy_names",
     "pyro_mm.model.conjugate", "pyro_mm.model.factor_analysis"),
    ("pyro_mm.model.fusion", "pyro_mm.model.params", "pyro_mm.model.factor_protocol",
     "pyro_mm.model.standardization"),
    ("pyro_mm.model.arguments", "pyro_mm.model.label_head"),
    ("pyro_mm.model.dp_mixture",),
    ("pyro_mm.model.guide",),
    ("pyro_mm.model.posterior",),
    ("pyro_mm.model",),
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


def _import_nodes(tree: ast.AST):
    """Every import statement of ``tree``, wherever it stands."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


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


def layer_of(module: str, layers=LAYERS) -> int | None:
    for index, patterns in enumerate(layers):
        for pattern in patterns:
            if module == pattern or (pattern.endswith("*") and (
                    module == pattern[:-1] or module.startswith(pattern[:-1] + "."))):
                return index
    return None


def _upward(module: str, graph, layers) -> list[str]:
    own = layer_of(module, layers)
    return sorted(t for t in graph[module]
                  if layer_of(t, layers) is not None and layer_of(t, layers) > (own or 0))


def test_the_graph_sees_imports_inside_functions_relative_ones_and_type_checking():
    graph = import_graph()
    assert "pyro_mm.model.factor_protocol" in graph["pyro_mm.model.dp_mixture"]
    assert "pyro_mm.factors" in graph["pyro_mm.cli.main"]
    assert "pyro_mm.diagnostics" in graph["pyro_mm.cli.diagnose"]
    assert "pyro_mm.model.factor_protocol" in graph["pyro_mm.factors.pmrl"]
    # under TYPE_CHECKING in pyro_mm.predictive.impute
    assert "pyro_mm.runs.result" in graph["pyro_mm.predictive.impute"]


@pytest.mark.parametrize("source", [
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..model.m import X\n",
    "def later():\n    from pyro_mm.model import m\n    return m\n",
], ids=["behind_type_checking", "inside_a_function"])
def test_a_hidden_upward_import_fails(tmp_path, source):
    package = tmp_path / "pyro_mm"
    (package / "data").mkdir(parents=True)
    (package / "model").mkdir()
    for path in ("__init__.py", "data/__init__.py", "model/__init__.py", "model/m.py"):
        (package / path).write_text("")
    (package / "data" / "d.py").write_text(source)
    graph = import_graph(package)
    assert _upward("pyro_mm.data.d", graph, LAYERS) == ["pyro_mm.model", "pyro_mm.model.m"]


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_layers_are_the_subpackages():
    """Every module belongs to a layer, and every subpackage is one."""
    missing = [m for m in module_files() if layer_of(m) is None]
    assert not missing, f"modules without a layer in tests/test_imports.py: {missing}"
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    named = {pattern[len("pyro_mm."):-1] for layer in LAYERS for pattern in layer
             if pattern.endswith("*")}
    assert packages == named
    model = [m for m in module_files() if m.startswith("pyro_mm.model")]
    assert not [m for m in model if layer_of(m, MODEL_LAYERS) is None]


@pytest.mark.parametrize("module", sorted(module_files()))
def test_imports_point_down(module):
    upward = _upward(module, import_graph(), LAYERS)
    assert not upward, (f"{module} (layer {layer_of(module)}) imports a layer above it: "
                        + ", ".join(f"{t} (layer {layer_of(t)})" for t in upward))


@pytest.mark.parametrize("module", sorted(m for m in module_files()
                                          if m.startswith("pyro_mm.model")))
def test_imports_inside_the_model_point_down(module):
    graph = {m: {t for t in targets if t.startswith("pyro_mm.model")}
             for m, targets in import_graph().items()}
    upward = _upward(module, graph, MODEL_LAYERS)
    assert not upward, f"{module} imports a part of the model above it: {upward}"
