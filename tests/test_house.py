"""The house rules that a reader relies on, checked on the source: no private name imported across
modules, and no import circle among the package's modules (module-level imports).

Each rule has an explicit list of the known exceptions still to be removed; a new violation fails,
and so does an exception that has gone (so the list only shrinks).
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dataparams"

# (importing module, imported module): none left.
KNOWN_PRIVATE: set[tuple[str, str]] = set()
# None left at import time (data/registry.py imports data/user.py only inside the function that
# loads a user's data).
KNOWN_CIRCLES: set[frozenset[str]] = set()


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def test_no_private_name_is_imported_from_another_module():
    found = set()
    for name, tree in _modules().items():
        is_package = (SRC.parent / Path(*name.split(".")) / "__init__.py").exists()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(name, node, is_package)
                if not source.startswith("dataparams") or source == name:
                    continue
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    found.add((name, source, tuple(private)))
    pairs = {(a, b) for a, b, _ in found}
    new = sorted(f for f in found if (f[0], f[1]) not in KNOWN_PRIVATE)
    assert not new, f"private names imported across modules: {new}"
    assert KNOWN_PRIVATE <= pairs, f"no longer needed, remove from KNOWN_PRIVATE: {KNOWN_PRIVATE - pairs}"


def _module_level_imports(name: str, tree: ast.Module, known: set[str], is_package: bool) -> set[str]:
    """The package modules ``name`` imports when it is imported (not inside functions)."""
    out = set()
    for node in tree.body:
        nodes = [node]
        if isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            nodes = node.body + node.orelse
        for n in nodes:
            if isinstance(n, ast.Import):
                out |= {a.name for a in n.names if a.name in known}
            elif isinstance(n, ast.ImportFrom):
                source = _resolve(name, n, is_package)
                for a in n.names:
                    full = f"{source}.{a.name}"
                    out.add(full if full in known else source)
    return {m for m in out if m in known and m != name}


def test_no_import_circle_among_modules():
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, tree in modules.items():
        is_package = (SRC.parent / Path(*name.split(".")) / "__init__.py").exists()
        graph[name] = _module_level_imports(name, tree, known, is_package)
    # Two modules importing each other at import time (a package importing its own submodules,
    # and they it, is how a package __init__ re-exports: not counted).
    circles = {frozenset({a, b}) for a, deps in graph.items() for b in deps
               if a in graph.get(b, ()) and not (a.startswith(b + ".") or b.startswith(a + "."))}
    assert circles <= KNOWN_CIRCLES, f"import circles: {sorted(map(sorted, circles - KNOWN_CIRCLES))}"
    assert KNOWN_CIRCLES <= circles, f"no longer a circle, remove from KNOWN_CIRCLES: {KNOWN_CIRCLES - circles}"


# Modules of the standard library that exist on one platform only: the library must import on any.
_POSIX_ONLY = {"fcntl", "termios", "pwd", "grp", "resource"}


def test_the_library_imports_no_posix_only_module_at_import_time():
    """The bench harness (with its ``fcntl`` file locks) lives in benchmarks/, outside the package;
    a module-level import of a POSIX-only module would make ``import dataparams`` fail on Windows."""
    found = []
    for name, tree in _modules().items():
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [(name, n) for n in names if n.split(".")[0] in _POSIX_ONLY]
    assert not found, f"POSIX-only modules imported at module level: {found}"
