"""The package's imports form layers without circles (issue 23).

Every `import` statement of lmmixup/ is read with `ast`, wherever it sits: at the top, inside a
function (a runtime import is still an arrow between modules, it only runs later) or under
`if TYPE_CHECKING:` (an arrow a reader follows all the same). Importing `a.b.c` also runs the
packages `a.b` and `a` it lives in, so those are arrows too, except for the importer's own
packages (already running when it does). Then:
  * no circle, runtime ones included;
  * the GRPO update (lmmixup/step.py) is imported, directly or through other modules, by
    nothing below it: the sampling layer, the math, distill, evaluation, the inspect tools;
  * the math imports nothing of the rewards (a shared normalisation belongs with the math).
And every import inside a function (lmmixup/, train.py, distill.py) says why it is there, in a
comment on its line or on a comment line just above (one such comment covers the imports that
follow it line by line): an optional dependency, the start-up it saves, or the circle it avoids.
Any other import belongs at the top of its module.
"""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lmmixup"
ROOT = PACKAGE.parent

STEP = "lmmixup.step"
SAMPLING = ("lmmixup.sampling", "lmmixup.rollout", "lmmixup.rollout_batch", "lmmixup.engine",
            "lmmixup.vllm_rollout")  # the sampling layer: Policy and rounds, and the engines
MATH = ("lmmixup.grpo", "lmmixup.logprobs", "lmmixup.attribution")  # pure tensor functions
BELOW_STEP = SAMPLING + MATH + ("lmmixup.distill", "lmmixup.evaluate", "lmmixup.inspect")
REWARDS = "lmmixup.rewards"

# Arrows allowed for now, each checked to still exist (test_no_stale_exceptions), so a line
# goes as soon as it is not needed. None today.
KNOWN: Set[Tuple[str, str]] = set()


def modules(root: Path) -> Dict[str, Path]:
    """Dotted name -> file of every module of the package at root (a package is its __init__)."""
    out = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def ancestors(name: str) -> List[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(root: Path, skip: Set[Tuple[str, str]] = frozenset()) -> Dict[str, Set[str]]:
    """module -> the package's modules it imports (every import statement, any depth), less the
    (module, imported) arrows in `skip` and the package runs they imply."""
    mods = modules(root)

    def known(name: str) -> str:  # the longest prefix that is one of the package's modules
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph: Dict[str, Set[str]] = {}
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: up level - 1 packages from this module's package
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                for a in node.names:  # `from pkg import sub` imports the module pkg.sub
                    full = f"{base}.{a.name}"
                    targets.add(full if full in mods else known(base))
        targets = {t for t in targets if (name, t) not in skip}
        own = set(ancestors(name))
        for t in list(targets):  # importing a.b.c runs the packages a.b and a first
            targets |= {a for a in ancestors(t) if a in mods and a not in own}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan, iteratively)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
    return import_graph(PACKAGE, skip=KNOWN)


def test_the_walker_sees_a_circle_closed_inside_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    import pkg.a\n")
    g = import_graph(pkg)
    assert g["pkg.a"] == {"pkg.sub.b", "pkg.sub"}  # the package it lives in runs first
    assert g["pkg.sub.b"] == {"pkg.a"} and g["pkg.c"] == {"pkg.a"}
    assert cycles(g) == [["pkg.a", "pkg.sub.b"]]


def test_no_import_circles(graph):
    assert cycles(graph) == []


def test_nothing_below_the_update_imports_the_training_step(graph):
    bad = {m: sorted(reachable(graph, m) & {STEP}) for m in graph
           if under(m, BELOW_STEP) and STEP in reachable(graph, m)}
    assert bad == {}


def test_the_math_imports_no_reward(graph):
    bad = {m: sorted(t for t in reachable(graph, m) if under(t, [REWARDS])) for m in MATH}
    assert bad == {m: [] for m in MATH}


def test_the_engine_imports_nothing_above_the_rollout_types(graph):
    assert graph["lmmixup.rollout_batch"] <= {"lmmixup.errors"}  # the leaf
    above = {"lmmixup.rollout", "lmmixup.sampling", STEP}
    assert not any(under(t, above) for t in reachable(graph, "lmmixup.engine"))


def test_no_stale_exceptions():
    g = import_graph(PACKAGE)
    stale = {(m, t) for m, t in KNOWN if t not in g.get(m, set())}
    assert stale == set(), "fixed on another branch: delete these KNOWN lines"


# Function-local imports allowed without their reason for a while (a branch still editing the
# file): (file, function, imported module), each checked to still exist
# (test_no_stale_unexplained). Empty since issue 23's branches merged.
UNEXPLAINED: Set[Tuple[str, str, str]] = set()


def comment_lines(source: str) -> Tuple[Set[int], Set[int]]:
    """(lines holding a comment, lines that are nothing but a comment), 1-based."""
    anywhere, alone = set(), set()
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            anywhere.add(tok.start[0])
            if lines[tok.start[0] - 1].lstrip().startswith("#"):
                alone.add(tok.start[0])
    return anywhere, alone


def local_imports(tree: ast.AST) -> Iterator[Tuple[str, ast.stmt]]:
    """(innermost function's name, import statement) for every import inside a function."""
    def visit(node: ast.AST, function: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield from visit(child, child.name)
            elif isinstance(child, (ast.Import, ast.ImportFrom)) and function:
                yield function, child
            else:
                yield from visit(child, function)
    yield from visit(tree, "")


def unexplained_imports(path: Path, rel: str) -> Set[Tuple[str, str, str]]:
    """(rel, function, module) of each local import in path with no comment giving its reason."""
    source = path.read_text()
    anywhere, alone = comment_lines(source)
    explained_ends: Set[int] = set()  # last lines of explained imports: a block continues them
    out = set()
    for function, node in sorted(local_imports(ast.parse(source, str(path))),
                                 key=lambda fn: fn[1].lineno):
        own = set(range(node.lineno, node.end_lineno + 1))
        above = node.lineno - 1
        if own & anywhere or above in alone or above in explained_ends:
            explained_ends.add(node.end_lineno)
            continue
        module = (node.module or "") if isinstance(node, ast.ImportFrom) else node.names[0].name
        out.add((rel, function, "." * getattr(node, "level", 0) + module))
    return out


def checked_files() -> List[Path]:
    return sorted(PACKAGE.rglob("*.py")) + [ROOT / "train.py", ROOT / "distill.py"]


def all_unexplained() -> Set[Tuple[str, str, str]]:
    return set().union(*(unexplained_imports(p, p.relative_to(ROOT).as_posix())
                         for p in checked_files()))


def test_the_reason_finder_reads_comments_not_strings(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(
        "def a():\n"
        "    import json  # a reason\n"
        "def b():\n"
        "    # a reason for the block\n"
        "    import os\n"
        "    from typing import (List,\n"
        "                        Dict)\n"
        "    import re\n"
        "\n"
        "    import sys\n"  # a blank line ends the block
        "def c():\n"
        "    x = '# not a comment'\n"
        "    import csv\n"
        "    y = 1  # a comment on code\n"
        "    import glob\n"
        "class D:\n"
        "    def e(self):\n"
        "        def f():\n"
        "            import math\n"
        "        return f\n"
        "import shutil\n")  # the module top needs no reason
    assert unexplained_imports(path, "m.py") == {("m.py", "b", "sys"), ("m.py", "c", "csv"),
                                                ("m.py", "c", "glob"), ("m.py", "f", "math")}


def test_every_local_import_says_why():
    """A function-local import keeps start-up fast, keeps an optional dependency optional or
    avoids a circle, and says which; anything else belongs at the top of the module."""
    assert all_unexplained() - UNEXPLAINED == set()


def test_no_stale_unexplained():
    stale = UNEXPLAINED - all_unexplained()
    assert stale == set(), "explained or moved now: delete these UNEXPLAINED lines"
