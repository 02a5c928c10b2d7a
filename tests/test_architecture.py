"""Structure checks: no import cycle inside the package (function-level imports included), no
mode module imports another, and models are built only in build.py."""
import ast
import os

from tests.conftest import ROOT

PKG = os.path.join(ROOT, "bidm_jax")


def _modules() -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: str, name: str, modules: dict) -> set[str]:
    """Package modules ``path`` imports anywhere (module or function level); ``from a import
    b`` counts as importing ``a.b`` when that is a module, else ``a``."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            targets = subs or [base]
        else:
            continue
        found |= {t for t in targets if t in modules}
    return found - {name}


def _graph():
    modules = _modules()
    return {m: _imports(p, m, modules) for m, p in modules.items()}


def _cycles(graph, inits=frozenset()) -> list:
    """Strongly connected components of more than one module (Tarjan); package ``inits``
    left out (importing a package runs its __init__ by design)."""
    edges = {m: {t for t in ts if t not in inits} for m, ts in graph.items() if m not in inits}
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_package():
    inits = {m for m, p in _modules().items() if os.path.basename(p) == "__init__.py"}
    assert _cycles(_graph(), inits) == []


def test_the_cycle_check_can_fail():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_mode_module_imports_another():
    graph = _graph()
    modes = {m for m in graph if m.startswith("bidm_jax.modes.")}
    for m in modes:
        assert not graph[m] & modes, f"{m} imports {graph[m] & modes}"


def test_models_are_built_in_build_py_only():
    """Modes, the export and the loop never construct models themselves."""
    graph = _graph()
    for m, deps in graph.items():
        if m.startswith(("bidm_jax.modes", "bidm_jax.training", "bidm_jax.export")):
            assert "bidm_jax.quant.factory" not in deps, m
            assert "bidm_jax.models" not in deps, m
