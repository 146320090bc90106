"""Layers that hold: the library never imports the command layer, and data/ never imports the models.

A static check of every file's AST, so function-local imports count as much as module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "brainfm_lightning"
COMMAND_LAYER = ("brainfm_lightning.cli", "brainfm_lightning.commands")


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module ``path`` imports, at any depth; relative imports resolved, ``from X import Y`` gives X and X.Y."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def is_within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def violations(files: list[Path], forbidden: tuple[str, ...], root: Path = PACKAGE.parent) -> list[str]:
    return sorted(f"{module_name(path, root)} imports {name}" for path in files
                  for name in imported_modules(path, root) if is_within(name, forbidden))


LIBRARY = [path for path in PACKAGE.rglob("*.py")
           if not is_within(module_name(path), COMMAND_LAYER)]


def test_the_scan_sees_the_whole_library():
    found = {module_name(path) for path in LIBRARY}
    assert {"brainfm_lightning.data.prepare", "brainfm_lightning.modules.segmentation"} <= found
    assert not any(is_within(name, COMMAND_LAYER) for name in found)


def test_no_library_module_imports_the_command_layer():
    assert violations(LIBRARY, COMMAND_LAYER) == []


def test_data_does_not_import_the_models():
    data = [path for path in LIBRARY if is_within(module_name(path), ("brainfm_lightning.data",))]
    assert data and violations(data, ("brainfm_lightning.models",)) == []


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from brainfm_lightning.cli import main\n", "brainfm_lightning.cli"),
    ("from brainfm_lightning import commands\n", "brainfm_lightning.commands"),
    ("from ..commands import config\n", "brainfm_lightning.commands"),
    ("import brainfm_lightning.commands.config as c\n", "brainfm_lightning.commands.config"),
])
def test_the_check_catches_local_relative_and_aliased_imports(tmp_path, source, expected):
    module = tmp_path / "brainfm_lightning" / "data" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text(source)
    assert f"brainfm_lightning.data.probe imports {expected}" in violations([module], COMMAND_LAYER, tmp_path)


def test_the_check_passes_lookalike_names(tmp_path):
    module = tmp_path / "brainfm_lightning" / "data" / "probe.py"
    module.parent.mkdir(parents=True)
    module.write_text("import brainfm_lightning.client\nfrom brainfm_lightning.data import commands_table\n")
    assert violations([module], COMMAND_LAYER, tmp_path) == []
