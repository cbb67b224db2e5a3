"""The tree shows the flow (DESIGN.md): no module imports one that imports it back, also
through imports inside functions, and the measuring core never imports drawing code."""
import ast
from pathlib import Path

import shiftlab

ROOT = Path(shiftlab.__file__).parent
CORE = ("actions", "law", "probe", "metrics", "audit", "result", "shifts", "shapes", "testing")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """shiftlab modules ``path`` imports anywhere in its body (resolved, absolute)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            if not target or not target.startswith("shiftlab"):
                continue
            for alias in node.names:                     # `from . import audio` is a module
                sub = f"{target}.{alias.name}"
                found.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists()
                          or (ROOT.parent / sub.replace(".", "/")).is_dir() else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("shiftlab")}
    return found


def _graph() -> dict[str, set[str]]:
    """Edges between modules; packages' ``__init__`` files only re-export, so they are not
    followed (an import of a package stops there)."""
    graph = {}
    for path in ROOT.rglob("*.py"):
        if path.name != "__init__.py":
            graph[_module_name(path)] = _imports(path)
    return graph


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_measuring_core_never_imports_drawing_code():
    for name in CORE:
        path = ROOT / f"{name}.py"
        text = path.read_text()
        assert "matplotlib" not in text and "from .report" not in text and "from .viz" not in text, name


def test_the_cli_offers_exactly_the_registered_protocols():
    """The parser lists protocol names without importing torch; they must be the registry's."""
    from shiftlab.actions import PROTOCOLS
    from shiftlab.cli import build_parser
    audit = build_parser()._subparsers._group_actions[0].choices["audit"]
    (protocol,) = [a for a in audit._actions if "--protocol" in a.option_strings]
    assert list(protocol.choices) == list(PROTOCOLS)
