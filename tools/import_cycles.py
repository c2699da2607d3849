"""Import cycles among dbdl's modules, counting every import: module level, inside functions and
under ``if TYPE_CHECKING:``. import-linter's layers contract (pyproject.toml) sees those too, but
only between layers; this finds a cycle anywhere, inside one layer or one package as well.

    python tools/import_cycles.py          # prints each cycle (strongly connected component); exit 1 if any
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dbdl": ROOT / "python" / "dbdl", "dbdl_udf": ROOT / "udf" / "dbdl_udf"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([*prefix, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            candidates = [module] + [f"{module}.{a.name}" for a in node.names]
        else:
            continue
        for c in candidates:
            # the deepest known module the name refers to (a.b.c -> a.b when c is a function)
            while c and c not in known:
                c = c.rpartition(".")[0]
            if c and c != name:
                targets.add(c)
    return targets


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    found = modules()
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    # a package's __init__ importing its own submodules is not a cycle of layers
    for name in graph:
        graph[name] = {t for t in graph[name] if not (t.startswith(name + ".") and found[name].name == "__init__.py")}
    comps = cycles(graph)
    for comp in comps:
        print(f"cycle of {len(comp)} modules: " + ", ".join(comp))
    print(f"{len(found)} modules, {sum(map(len, graph.values()))} imports, {len(comps)} cycles")
    return 1 if comps else 0


if __name__ == "__main__":
    raise SystemExit(main())
