"""Which gradmatch module imports which (top-level and deferred imports alike), and any cycles.

    python tools/import_graph.py
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gradmatch"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set) -> set:
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != me and name != "gradmatch":
                found.add(name)
    return found


def main() -> int:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    graph = {module_name(f): imports_of(f, modules) for f in files}
    for mod in sorted(graph):
        print(f"{mod} -> {', '.join(sorted(graph[mod])) or '-'}")
    cycles = find_cycles(graph)
    print("cycles:", "; ".join(" -> ".join(c) for c in cycles) or "none")
    return 1 if cycles else 0


def find_cycles(graph: dict) -> list:
    """One cycle per back edge found by depth-first search; a package importing its own submodules
    (``gradmatch.data`` -> ``gradmatch.data.cifar``) is how packages load, not a cycle, so such
    parent -> child edges are left out."""
    edges = {a: [b for b in bs if not b.startswith(a + ".")] for a, bs in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


if __name__ == "__main__":
    sys.exit(main())
