"""The import picture of gan_dist, from the source alone (ast; nothing is imported).

    python scripts/import_graph.py            # cycles, upward imports and deferred imports; exit 1 if any cycle
    python scripts/import_graph.py --edges    # also every module -> module edge

Cycles and upward imports count every import of a gan_dist module, at module level or inside a function
(an import moved into a function still ties two modules together); imports of gan_dist modules inside
functions are also listed. "Upward" means a
module imports one of a higher layer (LAYERS below: the order of knowledge, from declarations to commands).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = "gan_dist"
# Bottom to top. A module may import its own layer (no cycle) and the layers below it.
LAYERS = (
    ("config",),
    ("registry",),
    ("files", "configure", "progress"),
    ("distributed", "data", "models", "objectives", "augment", "metrics.features", "metrics.fid", "metrics.prdc",
     "metrics.classes", "metrics.classifier", "metrics.kid", "metrics.inception"),
    ("sampling", "checkpoint", "tracking"),
    ("metrics",),
    ("train",),
    ("api", "bench", "cli", "__main__", "__init__"),
)


def layer_of(module: str) -> int:
    """The layer of a dotted module name inside the package (the longest matching prefix decides)."""
    name = module[len(PACKAGE) + 1:] if module != PACKAGE else "__init__"
    best, best_length = len(LAYERS), -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of `from <level dots><target> import ...` inside `module`."""
    if level == 0:
        return target or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(path: Path, root: Path, known: set[str]) -> tuple[set[str], list[tuple[int, str]]]:
    """(module-level imports of package modules, [(line, module)] of imports inside functions)."""
    module = module_name(path, root)
    tree = ast.parse(path.read_text(), str(path))
    top: set[str] = set()
    deferred: list[tuple[int, str]] = []

    def targets(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if isinstance(node, ast.ImportFrom):
            base = resolve(module, path.name == "__init__.py", node.level, node.module)
            # `from pkg import sub` imports pkg.sub when sub is a module
            return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        return []

    def inside(node: ast.AST, in_function: bool, in_type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: not an import at run time
            function = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for target in targets(child):
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    while target not in known and "." in target:
                        target = target.rsplit(".", 1)[0]
                    (deferred.append((child.lineno, target)) if function else top.add(target))
                elif function:
                    deferred.append((child.lineno, target))
            inside(child, function, in_type_checking)

    inside(tree, False, False)
    top.discard(module)
    return top, deferred


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--edges", action="store_true", help="print every edge")
    args = parser.parse_args(argv)
    root = Path(args.root)
    files = sorted((root / PACKAGE).rglob("*.py"))
    known = {module_name(path, root) for path in files}
    graph: dict[str, set[str]] = {}
    deferred: dict[str, list[tuple[int, str]]] = {}
    for path in files:
        name = module_name(path, root)
        graph[name], deferred[name] = imports_of(path, root, known)
    # Cycles and upward imports count every import, module-level or inside a function: an import
    # moved into a function still ties the two modules together.
    every = {name: graph[name] | {t for _, t in deferred[name] if t in known and t != name} for name in graph}
    cycles = find_cycles(every)
    upward = sorted({(a, b) for a, targets in every.items() for b in targets
                     if layer_of(b) > layer_of(a) and not b.startswith(a + ".")})
    edges = sum(len(t) for t in graph.values())
    print(f"{len(graph)} modules, {edges} module-level imports between them")
    print(f"cycles: {len(cycles)}")
    for component in cycles:
        print(f"  {len(component)} modules: {' <-> '.join(component)}")
    print(f"upward imports: {len(upward)}")
    for a, b in upward:
        print(f"  {a} -> {b}")
    inner = {name: sorted({(line, target) for line, target in items if target.startswith(PACKAGE)})
             for name, items in deferred.items()}
    count = sum(len(items) for items in inner.values())
    print(f"imports of gan_dist modules inside functions: {count}")
    for name, items in sorted(inner.items()):
        for line, target in items:
            print(f"  {name}:{line} -> {target}")
    if args.edges:
        for name in sorted(graph):
            for target in sorted(graph[name]):
                print(f"{name} -> {target}")
    return 1 if cycles else 0


if __name__ == "__main__":
    raise SystemExit(main())
