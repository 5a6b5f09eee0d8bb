"""The package's layout: every module stands above what it imports.

The import graph is read from the source (``ast``), counting imports inside functions too and
leaving out only ``if TYPE_CHECKING:`` blocks (annotations, never run). It must have no cycle,
and imports must flow one way between the layers of docs/architecture.md: foundation
(``hmmlvd.core``: errors, validation, atomic writes, locks, persistence, device, memory,
provenance) -> data -> em -> models (hmm, then pc, then image) -> lvd -> pipelines -> command
line; the foundation imports nothing above it. ``hmmlvd.lvd`` and the image side must not load
``transformers`` (only text LVD needs it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hmmlvd"

#: Layer of each top-level part of the package; an import may only go to the same or a lower
#: layer. A new top-level module or package must be given its layer here.
LAYERS = {"core": 0, "data": 1, "em": 2, "ngram": 3, "hmm": 3, "pc": 4, "image": 5, "lvd": 6,
          "pipelines": 7, "cli_em": 8, "cli_flags": 8, "cli_image": 8, "cli_queries": 8,
          "cli": 9, "__main__": 10, "": 10}


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("hmmlvd", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements anywhere in ``tree`` except under ``if TYPE_CHECKING:``."""
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (``from pkg import sub`` counts as ``sub``)."""
    modules = module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in modules)
                continue
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    targets.add(sub)
                elif source in modules:
                    targets.add(source)
        targets.discard(name)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return LAYERS[part]


def test_every_top_level_module_has_a_layer():
    parts = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()
             if (path.suffix == ".py" or (path / "__init__.py").exists())}
    parts = {"" if part == "__init__" else part for part in parts}
    assert sorted(parts - set(LAYERS)) == []


def test_the_command_line_reads_its_flags_by_name():
    """The CLI modules parse flags into configs: no setting is read with getattr(args, ...),
    which hides a flag that a command does not define."""
    for path in sorted(PACKAGE.glob("cli*.py")):
        assert "getattr(args" not in path.read_text(encoding="utf-8"), path.name


def test_the_checker_finds_a_cycle_and_a_type_checking_import_is_not_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
                     "def f():\n    import y\n")
    assert sorted(n.names[0].name for n in _imports(tree)) == ["TYPE_CHECKING", "y"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_imports_flow_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                    if layer(b) > layer(a))
    assert upward == []


def test_hmm_imports_no_circuit_code_and_pc_no_image_code():
    graph = import_graph()
    for name, targets in graph.items():
        if name.startswith("hmmlvd.hmm"):
            assert not [t for t in targets if t.startswith(("hmmlvd.pc", "hmmlvd.image"))], name
        if name.startswith("hmmlvd.pc"):
            assert not [t for t in targets if t.startswith("hmmlvd.image")], name


@pytest.mark.parametrize("statement", [
    "import hmmlvd, hmmlvd.lvd, hmmlvd.lvd.image, hmmlvd.image, hmmlvd.pipelines.image_models, "
    "hmmlvd.pc, hmmlvd.pipelines.image_lvd; hmmlvd.lvd.distil_patches",
])
def test_image_side_does_not_import_transformers(statement):
    code = f"import sys; {statement}; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_text_names_of_hmmlvd_lvd_load_on_first_use():
    code = ("import sys, hmmlvd.lvd as lvd; before = 'transformers' in sys.modules; "
            "from hmmlvd.lvd.text.distill import distill; "
            "print(before, lvd.distill is distill, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["False", "True", "True"]
