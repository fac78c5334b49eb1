"""The package's import graph: no module imports a module that imports it back, and the layers point one way."""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

import anytext2_diffusers

PACKAGE = Path(anytext2_diffusers.__file__).resolve().parent
NAME = "anytext2_diffusers"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([NAME, *parts])] = path
    return found


def _resolve(target: str, modules: dict) -> str | None:
    """The module of the package that ``target`` (a module or a name in one) names, if any."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (functions included). A package's
    ``__init__`` running before its submodules is Python's doing, not an import, and is not an edge."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target.startswith(NAME):
                    resolved = _resolve(target, modules)
                    if resolved and resolved != name:
                        graph[name].add(resolved)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

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
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_walk_sees_the_package():
    graph = import_graph()
    assert f"{NAME}.training.loop" in graph
    assert f"{NAME}.training.step" in graph[f"{NAME}.training.loop"]
    assert f"{NAME}.training.losses" in graph[f"{NAME}.training.step"]


def test_no_import_cycle():
    assert find_cycles(import_graph()) == []


def test_layers_point_one_way():
    """data, models <- training, pipelines, evaluation, annotation; data never imports models."""
    lower = {"data": {"models", "training", "pipelines", "evaluation", "annotation", "conversion"}}
    lower["models"] = {"training", "pipelines", "evaluation", "annotation", "conversion"}
    lower["pipelines"] = {"training", "evaluation", "annotation"}
    wrong = []
    for module, targets in import_graph().items():
        layer = module.split(".")[1] if module.count(".") else ""
        for target in targets:
            if target.split(".")[1] in lower.get(layer, ()) if target.count(".") else False:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_every_module_imports():
    """A broken import fails here, by name (the tests never skip the package's own modules). ``__main__``
    modules run their command when imported; only their imports are checked (by the walk above)."""
    for name in sorted(import_graph()):
        if not name.endswith(".__main__"):
            importlib.import_module(name)
