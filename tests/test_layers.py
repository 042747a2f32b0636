"""The layers import downwards only: every import in every non-test module (read from the source, imports
inside functions included) is checked against the layer table, and a wrong one fails naming file:line.

protocol ← export, pipeline (not each other) ← serving ← demo, the root package (`resnest_serving/*.py`);
client sees only protocol; bench may import anything and nothing imports it (nor tests)."""

from __future__ import annotations

import ast
from pathlib import Path

from support import REPO_ROOT

ROOT = "resnest_serving"
PACKAGES = ("protocol", "export", "pipeline", "serving", "client", "demo")
EVERYTHING = frozenset((*PACKAGES, "root"))
# What each layer may import from our own code ("root" = resnest_serving/*.py, the commands above every package).
MAY_IMPORT = {
    "protocol": frozenset({"protocol"}),
    "export": frozenset({"protocol", "export"}),
    "pipeline": frozenset({"protocol", "pipeline"}),
    # The server reads bundles through protocol, never the exporter; `resnest tune` drives the load-test client.
    "serving": frozenset({"protocol", "pipeline", "serving", "client"}),
    "client": frozenset({"protocol", "client"}),
    "demo": EVERYTHING,
    "root": EVERYTHING,
    "bench": EVERYTHING | {"bench"},
}
# (file, imported module) → why: imports allowed against the table (none today; a stale entry fails the test).
ALLOWED: dict[tuple[str, str], str] = {}


def source_files() -> list[Path]:
    """Every non-test module of ours: the package folders, the root package and bench/."""
    files: list[Path] = []
    for folder in (*PACKAGES, ROOT, "bench"):
        files += sorted((REPO_ROOT / folder).rglob("*.py"))
    return files


def layer_of_file(path: Path) -> str:
    top = path.relative_to(REPO_ROOT).parts[0]
    return "root" if top == ROOT else top


def module_of_file(path: Path) -> str:
    """The installed name of a source file (folders install under resnest_serving; bench/ as itself)."""
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts if parts[0] in (ROOT, "bench") else [ROOT, *parts])


def imported_modules(source: str, package: str, modules: set[str]) -> list[tuple[int, str]]:
    """(line, absolute module name) of each import in `source`, a module of `package`, wherever it stands
    (functions included). `from X import name` counts as X.name when that is one of `modules`
    (`from resnest_serving import export_command`), else as X."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = {f"{base}.{alias.name}" for alias in node.names} & modules
            found += [(node.lineno, name) for name in sorted(names or {base})]
    return sorted(found)


def imports_of(path: Path, modules: set[str]) -> list[tuple[int, str]]:
    name = module_of_file(path)
    return imported_modules(path.read_text(), name if path.name == "__init__.py" else name.rpartition(".")[0],
                            modules)


def layer_of_module(name: str) -> str | None:
    """Our layer that module `name` belongs to, or None for anything not ours."""
    parts = name.split(".")
    if parts[0] == "bench":
        return "bench"
    if parts[0] != ROOT or len(parts) == 1:
        return None
    return parts[1] if parts[1] in PACKAGES else "root"


def test_modules_are_found() -> None:
    layers = {layer_of_file(path) for path in source_files()}
    assert layers == set(MAY_IMPORT), layers


def test_imports_go_down_only() -> None:
    test_names = {"tests", *(p.stem for p in (REPO_ROOT / "tests").glob("*.py"))}
    files = source_files()
    modules = {module_of_file(path) for path in files}
    wrong: list[str] = []
    used_allowances: set[tuple[str, str]] = set()
    for path in files:
        where, layer = path.relative_to(REPO_ROOT).as_posix(), layer_of_file(path)
        for line, name in imports_of(path, modules):
            target = layer_of_module(name)
            if name.split(".")[0] in test_names:
                wrong.append(f"{where}:{line}: imports {name} (nothing imports the tests)")
            elif target == "bench" and layer != "bench":
                wrong.append(f"{where}:{line}: imports {name} (no package imports bench/)")
            elif target is not None and target not in MAY_IMPORT[layer]:
                if (where, name) in ALLOWED:
                    used_allowances.add((where, name))
                    continue
                wrong.append(f"{where}:{line}: {layer} imports {name} ({target}); {layer} may import only "
                             f"{', '.join(sorted(MAY_IMPORT[layer]))}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)
    assert used_allowances == set(ALLOWED), f"stale allow-list entries: {set(ALLOWED) - used_allowances}"


def test_the_checker_sees_imports_inside_functions() -> None:
    """The parser itself: imports in functions, relative imports and `from package import module`."""
    source = ("import numpy\ndef f():\n    from resnest_serving import export_command\n    import bench.served\n"
              "    from .bundle import ModelBundle\n    from ..export.exporter import export\n")
    modules = {"resnest_serving.export_command", "resnest_serving.protocol.bundle"}
    assert imported_modules(source, "resnest_serving.protocol", modules) == [
        (1, "numpy"), (3, "resnest_serving.export_command"), (4, "bench.served"), (5, "resnest_serving.protocol.bundle"),
        (6, "resnest_serving.export.exporter")]
    assert layer_of_module("resnest_serving.export_command") == "root"
    assert layer_of_module("resnest_serving.pipeline.local") == "pipeline"
    assert layer_of_module("numpy") is None
