"""The package's layers (docs/architecture.md): no module imports one above it, no two modules import
each other (directly or around a loop), and the root holds only what every layer shares.

Imports are read from the source, function-level ones included, so a lazy import cannot hide a
dependency that runs up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import g2d

PACKAGE = Path(g2d.__file__).parent
# Bottom to top. The root's shared modules come first; the entry points (the public API in
# g2d/__init__.py, python -m g2d and the CLI) sit on top and may import anything.
LAYERS = [
    {"g2d.errors", "g2d.faults", "g2d.folders", "g2d.io", "g2d.locks", "g2d.registry", "g2d.config"},
    {"g2d.core"},
    {"g2d.data"},
    {"g2d.models"},
    {"g2d.methods"},
    {"g2d.training"},
    {"g2d.results"},
    {"g2d.runs"},
    {"g2d", "g2d.__main__", "g2d.cli"},
]
ROOT_MODULES = {name.split(".", 1)[1] for layer in (LAYERS[0], LAYERS[-1]) for name in layer if "." in name}


def module_name(path: Path) -> str:
    parts = ("g2d",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The g2d modules ``name`` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            if base.split(".")[0] != "g2d":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "g2d")
    found.discard(name)
    return found


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    for index, layer in enumerate(LAYERS):
        if any(name.startswith(prefix + ".") for prefix in layer if prefix != "g2d"):
            return index
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS in tests/test_layers.py")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_no_module_imports_a_layer_above_it():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, targets in graph().items() for target in sorted(targets)
              if layer_of(target) > layer_of(name)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if target == "g2d" or target not in edges:
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_root_holds_only_shared_modules_and_entry_points():
    root = {path.stem for path in PACKAGE.glob("*.py")} - {"__init__"}
    assert root <= ROOT_MODULES, f"modules at the root that belong in a layer: {sorted(root - ROOT_MODULES)}"


def test_the_checker_sees_an_upward_import(tmp_path):
    """The guard itself: an import from a layer above is found, function-level ones included."""
    source = tmp_path / "g2d" / "core" / "fake.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from g2d.training.engine import fit\n")
    known = {"g2d.core.fake": source, "g2d.training.engine": source}
    targets = imports_of("g2d.core.fake", source, known)
    assert targets == {"g2d.training.engine"} and layer_of("g2d.training.engine") > layer_of("g2d.core.fake")
