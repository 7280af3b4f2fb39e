"""The arrows of the house (DESIGN.md, "The house"): which package may import which.

`read_imports` parses every module of our packages (AST, nothing is imported)
and lists every `import` / `from ... import`: module level, inside functions,
and under `if TYPE_CHECKING:`. `check_arrows` holds them to `RULES`:

* the package rules count every import, TYPE_CHECKING-only ones included. They
  never run, but an arrow is an arrow: a kernel module that names a server type
  in an annotation depends on the server, and the checkers and compilers that
  read annotations (mypy, mypyc) follow it;
* sans-IO: no kernel module imports trio or pyOpenSSL (`OpenSSL`), except
  `ktls.handshake`, which drives OpenSSL's handshake; and no other kernel module
  runs `ktls.handshake` when it is imported (module-level imports, followed
  through our modules: `ktls.rx -> ktls.alerts -> ktls.handshake` would load
  OpenSSL). tests/ktls/test_sans_io.py proves the same by importing;
* no import cycle at run time: the graph of module-level imports (not under
  TYPE_CHECKING, not inside a function), whose circles leave a module used half
  initialised. A second graph adds the function-local imports: a circle there
  is the same two-way arrow, only hidden by deferring one side (as `server.app`
  once imported `server.supervisor` inside `run_server`, "which imports this
  module"). TYPE_CHECKING arrows back (`server.worker` naming `server.app.Server`
  in an annotation) close no cycle. Every cycle is printed, module by module.

The table covers the packages that do not exist yet (bpf, netmap, userland):
they are checked the day their directory appears. What it cannot see: that
userland takes only the kernel's *headers* (no header modules exist yet), and
what bench and tools run through a command line. tests/ is not checked: tests
may import anything.
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterable
from dataclasses import dataclass

TOP = pathlib.Path(__file__).resolve().parent.parent

KERNEL = frozenset({"mbuf", "ktls", "bpf", "netmap"})
USERLAND = "userland"
OURS = KERNEL | {"server", USERLAND, "bench", "tools"}
SANS_IO_FORBIDDEN = frozenset({"trio", "OpenSSL"})


@dataclass(frozen=True)
class Rule:
    """What modules of one package may import."""

    ours: frozenset[str]  # our other packages it may import (itself always)
    forbidden: frozenset[str] = frozenset()  # third-party top-level packages it may not
    excepted: tuple[tuple[str, str], ...] = ()  # (module, top-level name) allowed anyway
    why: str = ""


RULES: dict[str, Rule] = {
    "mbuf": Rule(frozenset(), SANS_IO_FORBIDDEN, why="the data path imports nothing of ours"),
    "ktls": Rule(
        frozenset({"mbuf"}),
        SANS_IO_FORBIDDEN,
        # The one module that drives OpenSSL's handshake (memory BIOs, no socket).
        excepted=(("ktls.handshake", "OpenSSL"),),
        why="kernel TLS sits on mbuf only",
    ),
    "bpf": Rule(frozenset({"mbuf"}), SANS_IO_FORBIDDEN, why="kernel BPF sits on mbuf only"),
    "netmap": Rule(frozenset({"mbuf"}), SANS_IO_FORBIDDEN, why="kernel netmap sits on mbuf only"),
    # `nomapd capture` / `nomapd pkt-gen` are subcommands of the server's command line.
    "server": Rule(KERNEL | {USERLAND}, why="the edge may import every kernel package"),
    USERLAND: Rule(KERNEL, why="userland includes the kernel's headers, never the server"),
    "bench": Rule(
        frozenset(),
        why="bench runs `python -m server`, and tools/ is not part of the package",
    ),
    "tools": Rule(frozenset({"bench"}), why="tools run nomapd by its command line"),
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, "ktls.alerts"
    target: str  # the imported module, "ktls.errors" or "trio" (a name inside it stripped)
    path: pathlib.Path
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`
    local: bool  # inside a function

    @property
    def runtime(self) -> bool:
        """Executed when `source` is imported."""
        return not self.type_only and not self.local

    def where(self) -> str:
        kind = " (TYPE_CHECKING)" if self.type_only else " (in a function)" if self.local else ""
        return f"{self.path}:{self.line}{kind}"


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(root: pathlib.Path, base: str, name: str | None) -> str:
    """`from base import name`: the submodule base.name when it is one, else base."""
    if name is not None and name != "*":
        candidate = root.joinpath(*base.split("."), name)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return f"{base}.{name}"
    return base


def _imports_of(root: pathlib.Path, path: pathlib.Path) -> list[Import]:
    source = module_name(root, path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.Import | ast.ImportFrom, type_only: bool, local: bool) -> None:
        found.append(Import(source, target, path.relative_to(root), node.lineno, type_only, local))

    def visit(node: ast.AST, type_only: bool, local: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node, type_only, local)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                add(_resolve(root, base, alias.name), node, type_only, local)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True, local)
            for child in node.orelse:
                visit(child, type_only, local)
        else:
            inner = local or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            for sub in ast.iter_child_nodes(node):
                visit(sub, type_only, inner)

    visit(ast.parse(path.read_text(), str(path)), False, False)
    return list(dict.fromkeys(found))  # `from a import b, c`: one arrow


def read_imports(root: pathlib.Path, packages: Iterable[str] = OURS) -> list[Import]:
    """Every import of every module of `packages` that exists under `root`."""
    out: list[Import] = []
    for pkg in sorted(packages):
        for path in sorted((root / pkg).rglob("*.py")):
            if not any(part.startswith(".") for part in path.relative_to(root).parts):
                out += _imports_of(root, path)
    return out


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def arrow_violations(imports: Iterable[Import], rules: dict[str, Rule] = RULES) -> list[str]:
    """The imports that go against `rules` (every import counts, see the module head)."""
    out: list[str] = []
    for imp in imports:
        src, dst = _top(imp.source), _top(imp.target)
        rule = rules.get(src)
        if rule is None or dst == src:
            continue
        if dst in OURS and dst not in rule.ours:
            out.append(f"{imp.where()}: {imp.source} imports {imp.target} ({src}: {rule.why})")
        elif dst in rule.forbidden and (imp.source, dst) not in rule.excepted:
            out.append(
                f"{imp.where()}: {imp.source} imports {imp.target} "
                f"({src} is sans-IO: no {', '.join(sorted(rule.forbidden))})"
            )
    return out


def import_graph(imports: Iterable[Import], *, local: bool = False) -> dict[str, set[str]]:
    """module -> our modules it runs on import (and the packages above them, whose
    `__init__` runs first); with `local`, also those its functions import."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set())
        if imp.type_only or (imp.local and not local) or _top(imp.target) not in OURS:
            continue
        parts = imp.target.split(".")
        for n in range(1, len(parts) + 1):
            target = ".".join(parts[:n])
            if target != imp.source and not imp.source.startswith(target + "."):
                graph[imp.source].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected set of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.add(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(_path(graph, min(scc), {min(scc)}, scc))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def _path(graph: dict[str, set[str]], start: str, goals: set[str], within: set[str]) -> list[str]:
    """A shortest path from `start` to one of `goals` (back to `start` if it is one),
    through `within` (breadth-first); [] when there is none."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for v in frontier:
            for w in sorted(graph.get(v, set()) & within):
                if w in goals:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), w]
                if w not in prev and w != start:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return []


def sans_io_leaks(imports: list[Import], rules: dict[str, Rule] = RULES) -> list[str]:
    """Kernel modules that load trio or OpenSSL at run time through another module.

    A direct import is `arrow_violations`' business. This catches the indirect one:
    importing any kernel module but ktls.handshake must not run ktls.handshake, which
    is the one allowed to import OpenSSL.
    """
    graph = import_graph(imports)
    loaders = {(imp.source, _top(imp.target)) for imp in imports if imp.runtime}
    out: list[str] = []
    for module in sorted(graph):
        rule = rules.get(_top(module))
        if rule is None or not rule.forbidden:
            continue
        for name in sorted(rule.forbidden):
            # Only through an excepted module: the others are reported where they import.
            goals = {src for src, top in loaders if top == name and src != module}
            goals &= {src for src, top in rule.excepted if top == name}
            path = _path(graph, module, goals, set(graph))
            if path:
                out.append(
                    f"{module} loads {name} at run time: {' -> '.join(path)} -> {name} "
                    f"(only {', '.join(src for src, top in rule.excepted if top == name)} may)"
                )
    return out


def check_arrows(root: pathlib.Path, packages: Iterable[str] = OURS) -> list[str]:
    """Every broken arrow and every import cycle under `root`, one line each."""
    imports = read_imports(root, packages)
    problems = arrow_violations(imports) + sans_io_leaks(imports)
    seen: list[set[str]] = []
    for local, what in ((False, "at run time"), (True, "through a function-local import")):
        for cycle in cycles(import_graph(imports, local=local)):
            if set(cycle) not in seen:
                seen.append(set(cycle))
                problems.append(f"import cycle {what}: " + " -> ".join(cycle))
    return problems


def test_the_house_holds_its_arrows() -> None:
    imports = read_imports(TOP)
    # Not vacuous: every package that exists was read.
    present = {p for p in OURS if (TOP / p / "__init__.py").is_file()}
    assert present >= {"mbuf", "ktls", "server", "bench", "tools"}
    assert {_top(imp.source) for imp in imports} == present
    problems = check_arrows(TOP)
    assert not problems, "\n".join(["arrows against DESIGN.md's house:", *problems])


def _write(root: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.relative_to(root).parents:
            init = root / parent / "__init__.py"
            if parent != pathlib.Path(".") and not init.exists():
                init.write_text("")
        path.write_text(text)


def test_the_checker_reports_every_kind_of_broken_arrow(tmp_path: pathlib.Path) -> None:
    _write(
        tmp_path,
        {
            "mbuf/sockbuf.py": "def f():\n    from ktls import session\n",  # in a function
            "mbuf/kern.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from server.app import Server\n",
            "ktls/session.py": "import trio\n",
            "ktls/rx.py": "from OpenSSL import SSL\n",
            "ktls/handshake.py": "from OpenSSL import SSL\nfrom . import session\n",
            "ktls/alerts.py": "from ktls.handshake import TlsError\n",
            "ktls/control.py": "from ktls.alerts import PeerAlert\n",
            "bench/cli.py": "from tools.nginx_compare import make_cert\n",
            "bench/servers.py": "import server.cli\n",
            "netmap/ring.py": "from ..bpf import bpf_tap\n",
            "userland/capture.py": "from server import cli\n",
            "server/app.py": "from server import supervisor\nimport ktls.handshake\n",
            "server/supervisor.py": "from server.app import announce\n",
            # A function-local arrow back is a cycle too; a TYPE_CHECKING one is not.
            "server/worker.py": "from typing import TYPE_CHECKING\nimport server.shutdown\n"
            "if TYPE_CHECKING:\n    from server.app import Server\n",
            "server/shutdown.py": "def f():\n    import server.worker\n",
        },
    )
    problems = check_arrows(tmp_path)
    expected = [
        "mbuf/sockbuf.py:2 (in a function): mbuf.sockbuf imports ktls.session",
        "mbuf/kern.py:3 (TYPE_CHECKING): mbuf.kern imports server.app",
        "ktls/session.py:1: ktls.session imports trio",
        "ktls/rx.py:1: ktls.rx imports OpenSSL",
        "bench/cli.py:1: bench.cli imports tools.nginx_compare",
        "bench/servers.py:1: bench.servers imports server.cli",
        "netmap/ring.py:1: netmap.ring imports bpf",
        "userland/capture.py:1: userland.capture imports server (",
        "ktls.alerts loads OpenSSL at run time: ktls.alerts -> ktls.handshake -> OpenSSL",
        "ktls.control loads OpenSSL at run time: ktls.control -> ktls.alerts -> ktls.handshake",
        "import cycle at run time: server.app -> server.supervisor -> server.app",
        "import cycle through a function-local import: "
        "server.shutdown -> server.worker -> server.shutdown",
    ]
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    # Nothing else: ktls.handshake may use OpenSSL; server may import ktls; the
    # TYPE_CHECKING arrow back from server.worker to server.app closes no cycle.
    assert len(problems) == len(expected), problems


def test_a_longer_cycle_is_printed_in_order(tmp_path: pathlib.Path) -> None:
    _write(
        tmp_path,
        {
            "server/a.py": "import server.b\n",
            "server/b.py": "from server import c\n",
            "server/c.py": "from .a import x\n",
            "server/d.py": "import server.a\n",
        },
    )
    assert check_arrows(tmp_path) == [
        "import cycle at run time: server.a -> server.b -> server.c -> server.a"
    ]
