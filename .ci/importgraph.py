#!/usr/bin/env python3
"""The module import graph of the streampro package, checked and printed by layer.

Reads every module of the packages in pyproject's package-dir (without importing them) and
takes each `import` as an edge, at module top or inside a function alike (a lazy import is a
dependency too); imports under `if TYPE_CHECKING:` are left out (annotations only). Fails when:
- the graph has a cycle;
- a module outside bench/ imports bench/ (benches sit on top: they use everything);
- vLLM is imported outside actors/, or DeepSpeed outside learners/;
- data/ or rewards/ import actors/, learners/ or bench/ (they import with torch alone).
Prints the packages and the modules by layer: layer 0 imports no project module, layer k
imports only layers below k. Exit 0 when clean, 1 otherwise.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"vllm": "actors", "deepspeed": "learners"}
LOW = ("data", "rewards")
UP_FROM_LOW = ("actors", "learners", "bench")


def modules() -> dict[str, Path]:
    """{dotted module name: file} for every .py file of the mapped packages."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out: dict[str, Path] = {}
    for pkg, folder in pyproject["tool"]["setuptools"]["package-dir"].items():
        base = ROOT / folder
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(base).with_suffix("").parts
            if pkg == "streampro" and len(rel) > 1:
                continue  # only streampro/'s own files; subpackages have their own entries
            parts = [pkg, *rel]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imported(tree: ast.AST, module: str, is_pkg: bool) -> list[tuple[str, int]]:
    """(dotted name, line) of every import outside `if TYPE_CHECKING:` blocks."""
    out: list[tuple[str, int]] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((name, node.lineno))
            out += [(f"{name}.{a.name}", node.lineno) for a in node.names]
        stack.extend(ast.iter_child_nodes(node))
    return out


def package(module: str) -> str:
    """The top-level folder a module lives in ('streampro' for streampro/'s own files)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FOLDERS) else "streampro"


FOLDERS = {"actors", "learners", "rewards", "data", "bench", "cluster"}


def main() -> int:
    mods = modules()
    edges: dict[str, set[str]] = defaultdict(set)
    problems: list[str] = []
    for mod, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(ROOT)
        for name, line in imported(tree, mod, path.name == "__init__.py"):
            head = name.split(".")[0]
            if head in HEAVY and package(mod) != HEAVY[head]:
                problems.append(f"{rel}:{line}: imports {head} outside {HEAVY[head]}/")
            if name in mods and name != mod:
                edges[mod].add(name)
                src, dst = package(mod), package(name)
                if dst == "bench" and src != "bench":
                    problems.append(f"{rel}:{line}: imports {name}: nothing imports bench/")
                if src in LOW and dst in UP_FROM_LOW:
                    problems.append(f"{rel}:{line}: {src}/ imports {name} ({dst}/ sits above)")
    layer: dict[str, int] = {}
    visiting: list[str] = []

    def depth(m: str) -> int:
        if m in layer:
            return layer[m]
        if m in visiting:
            cycle = visiting[visiting.index(m) :] + [m]
            problems.append("import cycle: " + " -> ".join(cycle))
            return 0
        visiting.append(m)
        layer[m] = 1 + max((depth(d) for d in edges[m]), default=-1)
        visiting.pop()
        return layer[m]

    for m in mods:
        depth(m)
    # streampro/ holds the core (config, types, ...) at the bottom and the entry points (cli,
    # train, ...) on top: a streampro module that reaches another folder is an entry point
    reach: dict[str, set[str]] = {}
    for m in sorted(mods, key=layer.__getitem__):
        reach[m] = {package(d) for d in edges[m]}.union(*(reach[d] for d in edges[m]))
    group = {
        m: "streampro:app" if package(m) == "streampro" and reach[m] - {"streampro"} else package(m)
        for m in mods
    }
    group = {m: "streampro:core" if g == "streampro" else g for m, g in group.items()}
    pkg_edges: dict[str, set[str]] = {g: set() for g in group.values()}
    for m, ds in edges.items():
        pkg_edges[group[m]] |= {group[d] for d in ds} - {group[m]}
    order: list[str] = []  # topological: each package after everything it imports
    while len(order) < len(pkg_edges):
        ready = sorted(g for g in pkg_edges if g not in order and pkg_edges[g] <= set(order))
        if not ready:
            rest = sorted(set(pkg_edges) - set(order))
            problems.append(f"packages import each other in a cycle among {', '.join(rest)}")
            order += rest
            break
        order.append(min(ready, key=lambda g: (len(pkg_edges[g]), g)))
    print("packages, bottom up (-> what each imports):")
    for g in order:
        print(f"  {g:15s} -> {', '.join(sorted(pkg_edges[g], key=order.index)) or '-'}")
    print("modules by layer (streampro. omitted):")
    by_layer: dict[int, list[str]] = defaultdict(list)
    for m, k in layer.items():
        by_layer[k].append(m.removeprefix("streampro.") if m != "streampro" else m)
    for k in sorted(by_layer):
        print(f"  L{k:<2d} " + ", ".join(sorted(by_layer[k])))
    print(
        f"  ({sum(1 for m in mods if group[m] == 'streampro:app')} entry points in streampro/: "
        + ", ".join(
            sorted(m.removeprefix("streampro.") for m in mods if group[m] == "streampro:app")
        )
        + ")"
    )
    for p in problems:
        print(f"importgraph: {p}")
    print(
        f"importgraph: {len(mods)} modules, {sum(map(len, edges.values()))} edges, "
        f"{len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
