"""The package's import structure, read from the source with ``ast`` (nothing is imported).

``vlm`` is one package: the core at its root, the wings below it (:data:`WINGS`), and ``vlm.cli``, the only
module that wires wings together. Dependencies flow one way: the core imports no wing and not the CLI, a
wing imports the core only (never the CLI, never another wing), and no two modules import each other,
directly or through others (function-level imports count too).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlm"
WINGS = ("vlm.train", "vlm.serve", "vlm.prep", "vlm.bench", "vlm.eval")
CLI = "vlm.cli"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The vlm modules ``name`` imports anywhere in its source. ``from pkg import sub`` counts as importing
    ``pkg.sub`` (and ``pkg`` itself only when some imported name is not a submodule)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rsplit(".", 1)[0]
            mod = (base + ("." + node.module if node.module else "")) if node.level else node.module
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            targets = subs + ([mod] if len(subs) < len(node.names) else [])
        for target in targets:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                out.add(target)
    return out


def part(name: str) -> str:
    """``"core"``, ``"cli"`` or the wing a module belongs to."""
    if name == CLI or name.startswith(CLI + "."):
        return "cli"
    return next((w for w in WINGS if name == w or name.startswith(w + ".")), "core")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_the_layout_is_one_package_with_the_expected_wings():
    known = modules()
    assert all(w in known for w in WINGS) and CLI in known
    top = {p.name for p in PACKAGE.parent.iterdir() if (p / "__init__.py").is_file()}
    assert top == {"vlm", "tests"} or top == {"vlm"}, f"other top-level packages: {sorted(top - {'vlm', 'tests'})}"


def test_dependencies_flow_one_way(graph):
    wrong = []
    for name, targets in graph.items():
        for target in targets:
            src, dst = part(name), part(target)
            if dst == "core" or src == dst or src == "cli":
                continue
            wrong.append(f"{name} ({src}) imports {target} ({dst})")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles(graph):
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_catch_what_they_guard(tmp_path):
    """The walker sees a sideways import and a cycle when they are there (so the tests above can fail)."""
    fake = {"vlm.train.a": tmp_path / "a.py", "vlm.serve.b": tmp_path / "b.py", "vlm.c": tmp_path / "c.py"}
    fake["vlm.train.a"].write_text("def f():\n    from vlm.serve import b\n")
    fake["vlm.serve.b"].write_text("from vlm import c\n")
    fake["vlm.c"].write_text("from vlm.train import a\n")
    edges = {n: imported(n, p, fake) for n, p in fake.items()}
    assert edges == {"vlm.train.a": {"vlm.serve.b"}, "vlm.serve.b": {"vlm.c"}, "vlm.c": {"vlm.train.a"}}
    assert part("vlm.train.a") != part("vlm.serve.b") != "core"
