"""Benchmark scripts import the package inside functions (so ``--help`` stays fast); a renamed function then
breaks a benchmark only when someone runs it. Every ``from anytext2_diffusers... import name`` in them,
at any depth, must resolve."""

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def package_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("anytext2_diffusers"):
            for alias in node.names:
                yield node.module, alias.name, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("anytext2_diffusers"):
                    yield alias.name, None, node.lineno


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_benchmark_package_imports_resolve(path):
    missing = []
    for module, name, line in package_imports(path):
        mod = importlib.import_module(module)
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{path.name}:{line}: {module}.{name}")
    assert not missing, missing


def test_the_check_sees_a_missing_name(tmp_path):
    bad = tmp_path / "bench_bad.py"
    bad.write_text("def f():\n    from anytext2_diffusers.conversion.sd15 import init_anytext2_blocks\n")
    assert list(package_imports(bad)) == [("anytext2_diffusers.conversion.sd15", "init_anytext2_blocks", 2)]
    assert not hasattr(importlib.import_module("anytext2_diffusers.conversion.sd15"), "init_anytext2_blocks")
