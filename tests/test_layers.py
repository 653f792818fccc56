"""The house's layers (shared/design/ARCHITECTURE.md): no import circles inside onedc_lib, and no arrow from a lower
room up to a higher one. Imports are read from the source (ast), lazy ones inside functions included."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "onedc_lib"

# room -> rooms it must never import (higher ones)
NOT_ABOVE = {
    "entropy": ("models", "losses", "training", "eval", "experiments"),
    "models": ("losses", "training", "eval", "experiments"),
    "eval": ("training", "experiments", "widgets", "notebook", "figures", "anatomy", "nbcontract"),
    "training": ("eval", "experiments", "widgets", "notebook", "figures", "anatomy"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """{module: onedc_lib modules it imports}; the package itself (a lazy facade) is left out."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                deps.update(f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names)
        graph[name] = {d for d in deps if d in paths and d not in (name, "onedc_lib")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_checker_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    graph = import_graph()
    assert "onedc_lib.models.prior" in graph["onedc_lib.models.codec"]  # a relative import, read as the module


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_no_arrow_up():
    def room(module):
        return module.split(".")[1] if "." in module else ""

    up = [(name, dep) for name, deps in import_graph().items() for dep in deps
          if room(dep) in NOT_ABOVE.get(room(name), ())]
    assert up == []
