"""Read the imports of every Python file of a package tree and judge them against its layers.

Every import counts: module level and inside functions, absolute and relative (`from . import x`),
and `importlib.import_module("...")` / `__import__("...")` with a string literal. An import names a
module of the tree when the module (or package) exists there; `from package import name` names the
submodule `package.name` when that file exists, else the package itself. Importing a submodule
implicitly imports its parent packages: those implicit arrows are not counted (a package's
`__init__` importing its own submodules would otherwise always be a cycle).

`check(root, package, layers)` returns problems as "path:line: text" strings, `path` relative to
`root`: upward arrows, arrows between two folders of the same layer that may not see each other,
and import cycles between modules.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set

SKIPPED_DIRECTORIES = {"__pycache__", ".git", ".venv", "build", "_build", "node_modules"}


@dataclass(frozen=True)
class Layers:
    """`levels[folder]`: the floor of each top-level folder (0 at the bottom); a folder may import
    a folder on a lower floor, and on its own floor only the folders listed in `siblings` (a folder
    always sees itself). Top-level folders absent from `levels` are not read."""

    levels: Dict[str, int]
    siblings: Dict[str, Sequence[str]]

    def allows(self, source: str, target: str) -> bool:
        if source == target:
            return True
        if self.levels[target] < self.levels[source]:
            return True
        return self.levels[target] == self.levels[source] and target in self.siblings.get(source, ())


@dataclass(frozen=True)
class Edge:
    source: str  # dotted module names
    target: str
    path: str  # file of the source, relative to the root
    line: int


def module_files(root: str, package: str, folders: Iterable[str]) -> Dict[str, str]:
    """Dotted module name -> file path (relative to root) for the package's `__init__.py` and every
    .py file below the given top-level folders."""
    modules: Dict[str, str] = {}
    if os.path.exists(os.path.join(root, "__init__.py")):
        modules[package] = "__init__.py"
    for folder in folders:
        top = os.path.join(root, folder)
        if not os.path.isdir(top):
            continue
        for directory, subdirectories, files in os.walk(top):
            subdirectories[:] = sorted(
                d for d in subdirectories if d not in SKIPPED_DIRECTORIES and not d.startswith(".")
            )
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.relpath(os.path.join(directory, name), root)
                parts = path[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join([package] + parts)] = path
    return modules


def _is_package(modules: Dict[str, str], module: str) -> bool:
    return modules[module].endswith("__init__.py")


def _resolve(modules: Dict[str, str], name: str) -> Optional[str]:
    """The longest prefix of `name` that is a module of the tree (None when outside it)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _relative_base(modules: Dict[str, str], module: str, level: int, name: Optional[str]) -> str:
    package = module if _is_package(modules, module) else module.rpartition(".")[0]
    for _ in range(level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{name}" if name else package


def _string_imports(node: ast.Call) -> Optional[str]:
    """The module named by `importlib.import_module("...")`, `import_module("...")` or
    `__import__("...")` with a string literal as first argument."""
    function = node.func
    called = (
        function.attr
        if isinstance(function, ast.Attribute)
        else function.id
        if isinstance(function, ast.Name)
        else None
    )
    if called not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return first.value
    return None


def imports_of(modules: Dict[str, str], root: str, module: str) -> List[Edge]:
    """Every arrow from `module` to another module of the tree, with its line."""
    path = modules[module]
    with open(os.path.join(root, path), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), filename=path)
    edges: List[Edge] = []
    seen: Set[Edge] = set()

    def add(name: str, line: int) -> None:
        target = _resolve(modules, name)
        edge = Edge(module, target, path, line) if target is not None and target != module else None
        if edge is not None and edge not in seen:  # `from x import a, b` is one arrow
            seen.add(edge)
            edges.append(edge)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = _relative_base(modules, module, node.level, node.module) if node.level else (node.module or "")
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                add(submodule if submodule in modules else base, node.lineno)
        elif isinstance(node, ast.Call):
            name = _string_imports(node)
            if name is not None:
                if name.startswith("."):
                    level = len(name) - len(name.lstrip("."))
                    name = _relative_base(modules, module, level, name.lstrip(".") or None)
                add(name, node.lineno)
    return edges


def _folder(package: str, module: str) -> Optional[str]:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == package else None


def _cycles(edges: Sequence[Edge]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph: Dict[str, Set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []
    counter = [0]

    def visit(start: str) -> None:  # iterative, so deep graphs do not hit the recursion limit
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = counter[0]
                    counter[0] += 1
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    advanced = True
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def check(root: str, package: str, layers: Layers) -> List[str]:
    """Problems of the tree at `root` (the package `package`) as "path:line: text" strings."""
    modules = module_files(root, package, layers.levels)
    edges = [edge for module in sorted(modules) for edge in imports_of(modules, root, module)]
    problems: List[str] = []
    for edge in sorted(edges, key=lambda e: (e.path, e.line, e.target)):
        source, target = _folder(package, edge.source), _folder(package, edge.target)
        if source is None or target is None or layers.allows(source, target):
            continue
        if layers.levels[target] > layers.levels[source]:
            why = f"{source}/ is below {target}/"
        else:
            why = f"{source}/ and {target}/ are on the same floor and may not import each other"
        problems.append(f"{edge.path}:{edge.line}: {edge.source} imports {edge.target} ({why})")
    for component in _cycles(edges):
        members = set(component)
        arrows = sorted(
            (e for e in edges if e.source in members and e.target in members), key=lambda e: (e.path, e.line)
        )
        first = arrows[0]
        listed = "; ".join(f"{e.path}:{e.line} {e.source} -> {e.target}" for e in arrows)
        problems.append(f"{first.path}:{first.line}: import cycle between {', '.join(component)}: {listed}")
    return problems
