"""The code's layering, read from the source: no import cycles, no import upward.

Every ``import`` of our packages counts, wherever it is written: at module level,
inside a function (a lazy import is still a dependency, only a later one) and under
``if TYPE_CHECKING:`` (a reader has to follow it all the same). So a cycle cannot be
hidden by moving one of its imports into a function.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("transport", "store", "gcs", "actorcore")

# Lowest first. A module may import from a lower layer and from its own
# component; components that share a layer never import one another (the API,
# the node and the worker process each stand on the core worker alone).
LAYERS: list[tuple[str, ...]] = [
    ("transport",),
    ("store", "gcs"),
    ("actorcore.exceptions", "actorcore.kernel"),
    ("actorcore.protocol",),
    ("actorcore.session",),
    ("actorcore.core_worker",),
    ("actorcore.api", "actorcore.node", "actorcore.worker"),
    ("actorcore.runtime_context",),
    ("actorcore.util",),
    ("actorcore.actor",),
    ("actorcore",),
    ("actorcore.testing",),
    ("actorcore.cli",),
    ("actorcore.__main__",),
]


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        base = module.split(".")
        if not MODULES[module].name == "__init__.py":
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    for alias in node.names:  # ``from pkg import mod`` depends on pkg.mod itself
        sub = f"{target}.{alias.name}"
        yield sub if sub in MODULES else target


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        deps = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(module, node):
                    while target and target not in MODULES:  # ``import a.b.c`` -> a.b.c's module
                        target = target.rpartition(".")[0]
                    if target and target != module:
                        deps.add(target)
    return graph


def _layer(module: str) -> tuple[int, str]:
    best: tuple[int, str] | None = None
    for rank, components in enumerate(LAYERS):
        for component in components:
            if module == component or module.startswith(component + "."):
                if best is None or len(component) > len(best[1]):
                    best = (rank, component)
    assert best is not None, f"module {module} is in no layer: add it to LAYERS"
    return best


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_graph_is_read_whole():
    graph = _imports()
    # A lazy import and a TYPE_CHECKING one are both seen (known edges of each kind).
    assert "actorcore.node" in {_layer(m)[1] for m in graph["actorcore"]}  # TYPE_CHECKING
    assert "gcs" in graph["actorcore.node._tree"]  # inside a function
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_between_modules():
    graph = _imports()
    cycles = _cycles(graph)
    described = [
        " ; ".join(f"{a} -> {b}" for a in cycle for b in sorted(graph[a]) if b in cycle)
        for cycle in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def test_no_module_imports_from_a_layer_above_or_beside_it():
    wrong = []
    for module, deps in sorted(_imports().items()):
        rank, component = _layer(module)
        for dep in sorted(deps):
            dep_rank, dep_component = _layer(dep)
            if dep_rank > rank or (dep_rank == rank and dep_component != component):
                wrong.append(f"{module} ({component}) imports {dep} ({dep_component})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
