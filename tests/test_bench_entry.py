"""`python -m lmmixup.bench` finds benchmarks/ as a package of the checkout, with no sys.path edit."""

import ast
import subprocess
import sys

from conftest import ROOT


def _uses_sys_path(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" \
                and isinstance(node.value, ast.Name) and node.value.id == "sys":
            return True  # sys.path.insert, append, or a read the next edit would follow
    return False


def test_no_module_uses_sys_path():
    offenders = [str(p.relative_to(ROOT)) for d in ("lmmixup", "benchmarks")
                 for p in sorted((ROOT / d).rglob("*.py")) if _uses_sys_path(ast.parse(p.read_text()))]
    assert offenders == []


def test_bench_runs_from_the_checkout_root():
    proc = subprocess.run([sys.executable, "-m", "lmmixup.bench", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "--only" in proc.stdout
