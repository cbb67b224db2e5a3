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


# ----------------------------------------------------------------------------- protocol names
PROTOCOL_NAMES = {"circular", "canvas", "crop", "fractional"}


def _names_a_protocol(node: ast.AST) -> bool:
    """A protocol name as a literal, alone or among the items of a tuple, list or set."""
    if isinstance(node, ast.Constant):
        return node.value in PROTOCOL_NAMES
    return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(map(_names_a_protocol, node.elts))


def _is_a_protocol(node: ast.AST) -> bool:
    """An expression that holds a protocol or its name (``args.protocol``, ``self.action.name``),
    not a padding mode or a convert method, which share the word "circular"."""
    text = ast.unparse(node)
    return "protocol" in text.lower() or "action" in text.lower()


def _switches_on_protocol_names(source: str) -> list[str]:
    """The comparisons (``==``, ``!=``, ``in``, ``match``/``case``) of a protocol with a
    protocol's name in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(map(_names_a_protocol, operands)) and any(map(_is_a_protocol, operands)):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Match) and _is_a_protocol(node.subject):
            found += [f"line {case.pattern.lineno}: case {ast.unparse(case.pattern)}"
                      for case in node.cases if any(isinstance(p, ast.MatchValue) and
                                                    _names_a_protocol(p.value)
                                                    for p in ast.walk(case.pattern))]
    return found


def test_the_checker_finds_switches_on_protocol_names_and_only_those():
    switches = ('if args.protocol != "circular": pass\n'
                'ok = r.provenance.protocol in ("circular", "fractional")\n'
                'half = protocol == "circular"\n'
                'crop = self.action.name == "crop"\n'
                'match config.protocol:\n    case "canvas": pass\n')
    assert len(_switches_on_protocol_names(switches)) == 5
    others = ('a = m.padding_mode != "circular"\nb = method == "circular"\n'
              'c = mode == "circular"\nd = name in ("limit", "canvas")\n'
              'e = capabilities(args.protocol).has_half_pixel\n')
    assert _switches_on_protocol_names(others) == []


def test_no_module_but_actions_switches_on_a_protocol_name():
    """A protocol says what it can do (its capability flags, shiftlab.protocols); nothing
    outside its class compares its name (DESIGN.md)."""
    from shiftlab.protocols import protocol_names
    assert set(protocol_names()) == PROTOCOL_NAMES            # the literals this test looks for
    found = {str(path.relative_to(ROOT)): hits for path in sorted(ROOT.rglob("*.py"))
             if path.name != "actions.py" and (hits := _switches_on_protocol_names(path.read_text()))}
    assert not found, found


def test_the_action_classes_are_their_declarations():
    """Each registered action class inherits its torch-free declaration: the same names, in
    the same order, and the flags the command line and the report read."""
    from shiftlab.actions import PROTOCOLS
    from shiftlab.protocols import capabilities, protocol_names
    assert list(PROTOCOLS) == protocol_names()
    for name, action in PROTOCOLS.items():
        assert issubclass(action, capabilities(name)) and action.name == name
    assert [n for n, a in PROTOCOLS.items() if a.has_all_shifts] == ["circular"]
    assert [n for n, a in PROTOCOLS.items() if a.has_half_pixel] == ["circular", "fractional"]
    assert [n for n, a in PROTOCOLS.items() if a.needs_crop] == ["crop"]


def test_the_command_line_starts_without_torch():
    """The parser, the audit's config and the protocols' declarations import no torch, so
    Ctrl-C while the command line starts is one line (torch loads with Ctrl-C held)."""
    import subprocess
    import sys
    code = ("import sys; from shiftlab.cli import build_parser; build_parser(); "
            "import shiftlab.config, shiftlab.protocols, shiftlab.report; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


#: The floors of DESIGN.md's flow, lowest first: a module imports only from its own floor or
#: below (an import up a floor is an arrow against the flow). Prefixes end in ".".
FLOORS = [
    ("ground", ["errors", "fmt", "typed_json", "shapes", "io", "device", "distributed", "shifts",
                "spectrogram", "protocols", "data."]),
    ("actions", ["actions", "config", "data.canvas"]),
    ("layers and models", ["layers.", "convert", "models.", "loading"]),
    ("the law", ["probe", "law", "metrics", "result", "batches"]),
    ("the engine's parts", ["plan", "observers", "testing", "lie", "periodic", "export"]),
    ("the engine", ["audit"]),
    ("what uses it", ["train", "weights", "experiments.", "viz.", "report", "demo", "cli.",
                      "cli", "__main__"]),
]


def _floor(module: str) -> int:
    """A module's floor: its own name first, else the longest package prefix."""
    name = module.removeprefix("shiftlab.")
    for level, (_, members) in enumerate(FLOORS):
        if name in members:
            return level
    prefixes = [(len(m), level) for level, (_, members) in enumerate(FLOORS)
                for m in members if m.endswith(".") and name.startswith(m)]
    assert prefixes, f"{module} has no floor in FLOORS: give it one"
    return max(prefixes)[1]


def test_no_import_points_up_a_floor():
    graph = _graph()
    up = [f"{a} ({FLOORS[_floor(a)][0]}) -> {b} ({FLOORS[_floor(b)][0]})"
          for a, targets in sorted(graph.items()) for b in sorted(targets)
          if b in graph and _floor(b) > _floor(a)]
    assert not up, "imports up a floor:\n" + "\n".join(up)
