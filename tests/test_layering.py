"""The import graph of `src/compalign`: no cycles, and every import points down the layering.

Layers, lowest first (a module may import its own layer and the ones below):

    shared helpers (io, cache, _config, _lazy, plots, prompts_io) -> training utilities (training) -> world
    -> command-line helpers (_cli, config_cli) -> generators -> rewards -> noise_optimization
    -> gallery / ranking / pairs -> feedback -> iterate -> cli

The graph is read with `ast` from the source, imports at module level and inside functions alike,
so a lazy import still counts as an edge. No module imports a private name (``_name``) of another
package: what a package shares has a public name.

Modules import at the top. An import inside a function is kept only where it loads a heavy or
optional package (`LAZY_PACKAGES`), itself or through the compalign module it imports, or is one of
`KNOWN_LAZY` (each with its reason).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS = [
    [
        "compalign",
        "compalign.io",
        "compalign.cache",
        "compalign._config",
        "compalign._lazy",
        "compalign.plots",
    ]
    + ["compalign.prompts_io"],
    ["compalign.training"],
    ["compalign.world"],
    ["compalign._cli", "compalign.config_cli"],
    ["compalign.generators"],
    ["compalign.rewards"],
    ["compalign.noise_optimization"],
    ["compalign.gallery", "compalign.ranking", "compalign.pairs"],
    ["compalign.feedback"],
    ["compalign.iterate"],
    ["compalign.cli"],
]

KNOWN_CYCLES: list[set[str]] = []

# (importing module, module of the name, name): `iterate` still imports these private aliases of
# public names; they go when `iterate` is split into one module per stage
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()


# packages imported inside functions: slow to import (and not needed by most commands) or optional
LAZY_PACKAGES = {
    "transformers",
    "diffusers",
    "open_clip",
    "peft",  # optional: the `lora` extra
    "matplotlib",
    "scipy",
    "playwright",
    "accelerate",
    "psutil",  # optional
    "rich",  # only tables need it; ~40 ms of `compalign --help`
}

# (importing module, imported module): light, yet imported inside functions
KNOWN_LAZY = {
    # http.server and sqlite3 add ~20 ms to `compalign --help`
    ("compalign.ranking.cli", "compalign.ranking.server"),
    ("compalign.ranking.cli", "compalign.ranking.people"),
    ("compalign.ranking.cli", "compalign.ranking.store"),
    # the training configs (`compalign.rewards.<x>.config`) load without torch
    ("compalign.rewards", "compalign.rewards.base"),
    ("compalign.rewards", "compalign.rewards.registry"),
}


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__)."""
    out = {}
    for path in sorted((SRC / "compalign").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def package_of(name: str, is_pkg: bool) -> str:
    """The package a module lies in (a package's ``__init__``: the package itself)."""
    return name if is_pkg else name.rpartition(".")[0]


def _source(name: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a ``from X import ...``."""
    if not node.level:
        return node.module or ""
    package = package_of(name, is_pkg).split(".")
    package = package[: len(package) - node.level + 1]
    return ".".join(package + ([node.module] if node.module else []))


def _targets(name: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, mods: dict) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "compalign"]
    base = _source(name, is_pkg, node)
    if base.split(".")[0] != "compalign":
        return []
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
    return subs + ([base] if len(subs) < len(node.names) else [])


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}."""
    mods = modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _targets(name, is_pkg, node, mods):
                while target not in mods:  # `import compalign.x.y.Name` -> the module that has it
                    target = target.rpartition(".")[0]
                if target != name:
                    graph[name].setdefault(target, node.lineno)
    return graph


def private_imports() -> list[tuple[str, str, str, int]]:
    """``(module, module of the name, name, line)`` of each private name a module imports from a
    module of another package (a private submodule, ``from pkg import _mod``, counts as a name of
    ``pkg``)."""
    mods = modules()
    found = []
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _source(name, is_pkg, node)
            if base.split(".")[0] != "compalign" or base not in mods:
                continue
            home = package_of(base, mods[base][1])
            for a in node.names:
                private = a.name.startswith("_") and not a.name.startswith("__")
                if private and home != package_of(name, is_pkg):
                    found.append((name, base, a.name, node.lineno))
    return found


def cycles(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in graph:
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    """Index in `LAYERS` of the entry that names the module or the subpackage it lies in (the
    bare ``compalign`` entry is the package's ``__init__`` only)."""
    best, depth = None, -1
    for i, names in enumerate(LAYERS):
        for prefix in names:
            inside = prefix != "compalign" and module.startswith(prefix + ".")
            if (module == prefix or inside) and prefix.count(".") > depth:
                best, depth = i, prefix.count(".")
    assert best is not None, f"{module} is in no layer; add it to LAYERS"
    return best


def test_no_import_cycles():
    found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


def test_imports_point_down_the_layering():
    graph = import_graph()
    upward = [
        f"{src} (line {line}) imports {dst}"
        for src, targets in graph.items()
        for dst, line in targets.items()
        if layer(dst) > layer(src)
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_module_imports_another_packages_private_names():
    found = [
        f"{src} (line {line}) imports {name} from {home}"
        for src, home, name, line in private_imports()
        if (src, home, name) not in KNOWN_PRIVATE_IMPORTS
    ]
    assert not found, "private names imported across packages:\n" + "\n".join(found)


def _module_level(tree: ast.Module, type_checking: list | None = None) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when a module is imported; those of ``if TYPE_CHECKING:`` blocks (which
    never run) go to `type_checking`."""
    out = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                out.append(node)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                if type_checking is not None:
                    type_checking.extend(n for n in node.body if isinstance(n, ast.Import | ast.ImportFrom))
            elif isinstance(node, ast.If):
                walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    walk(block)
            elif isinstance(node, ast.ClassDef):
                walk(node.body)

    walk(tree.body)
    return out


def _imported(name: str, is_pkg: bool, node: ast.Import | ast.ImportFrom, mods: dict) -> list[str]:
    """The compalign modules and the top-level names of the other packages an import loads."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = _source(name, is_pkg, node)
        subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
        names = subs + ([base] if len(subs) < len(node.names) else [])
    out = []
    for n in names:
        if n.split(".")[0] != "compalign":
            out.append(n.split(".")[0])
            continue
        while n not in mods:
            n = n.rpartition(".")[0]
        out.append(n)
    return out


def lazy_imports() -> tuple[list[tuple[str, int, list[str]]], dict[str, set[str]]]:
    """``(module, line, what it loads)`` of every import inside a function or method, and, per
    module, the other packages its module-level imports load (directly or through compalign)."""
    mods = modules()
    direct: dict[str, set[str]] = {}
    lazy = []
    for name, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        type_checking: list = []
        top = _module_level(tree, type_checking)
        direct[name] = {t for node in top for t in _imported(name, is_pkg, node, mods)}
        at_top = set(map(id, top + type_checking))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in at_top:
                lazy.append((name, node.lineno, _imported(name, is_pkg, node, mods)))
    loads: dict[str, set[str]] = {}

    def closure(m: str) -> set[str]:
        if m not in loads:
            loads[m] = set()
            seen, todo = {m}, [m]
            while todo:
                parts = todo.pop().split(".")  # importing a module runs every __init__ above it
                above = [".".join(parts[:i]) for i in range(1, len(parts))]
                for t in [*direct.get(".".join(parts), ()), *above]:
                    if t.split(".")[0] != "compalign":
                        loads[m].add(t)
                    elif t not in seen:
                        seen.add(t)
                        todo.append(t)
        return loads[m]

    for m in mods:
        closure(m)
    return lazy, loads


def test_imports_inside_functions_only_load_heavy_or_optional_packages():
    lazy, loads = lazy_imports()
    found = []
    for src, line, targets in lazy:
        for t in targets:
            heavy = t in LAZY_PACKAGES or loads.get(t, set()) & LAZY_PACKAGES
            if not heavy and (src, t) not in KNOWN_LAZY and t != src and not src.startswith(t + "."):
                found.append(f"{src} (line {line}) imports {t} inside a function")
    assert not found, (
        "import these at the top of the module (only heavy or optional packages load lazily, see "
        "LAZY_PACKAGES):\n" + "\n".join(found)
    )
