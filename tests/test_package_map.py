"""The package's map is true to the code: docs/DESIGN.md's floors match the imports, and the README names every module."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dpo_edu"


def modules() -> dict[str, list[Path]]:
    """{module: its files}: every top-level module, and the exercises package as one."""
    found = {path.stem: [path] for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    for package in (path.parent for path in PACKAGE.glob("*/__init__.py")):
        found[package.name] = sorted(package.glob("*.py"))
    return found


def imported(files: list[Path], names: set[str]) -> set[str]:
    """The package's modules that `files` import (relative imports, at any depth in the file)."""
    found = set()
    for path in files:
        inside_subpackage = path.parent != PACKAGE
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level == 0:
                continue
            if inside_subpackage and node.level == 1:
                continue  # a sibling inside the same subpackage
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found & names


def design_floors() -> dict[str, int]:
    text = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    section = text.split("## The package, floor by floor", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for floor, cell in re.findall(r"^\| (\d+) \| (.+) \|$", section, re.M):
        for name in re.findall(r"`(\w+)`", cell):
            assert name not in floors, f"docs/DESIGN.md puts {name} on two floors"
            floors[name] = int(floor)
    return floors


def test_the_design_map_names_every_module_once_and_no_other():
    assert set(design_floors()) == set(modules())


def test_every_module_imports_only_from_lower_floors():
    floors, found = design_floors(), modules()
    upward = [f"{name} (floor {floors[name]}) imports {other} (floor {floors[other]})"
              for name, files in found.items() for other in sorted(imported(files, set(found)) - {name})
              if floors[other] >= floors[name]]
    assert not upward, "; ".join(upward)


def test_the_readme_module_table_names_every_module_and_no_other():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## The package\n", 1)[1].split("\n\n", 1)[0]
    named = re.findall(r"^\| `dpo_edu\.(\w+)` \|", table, re.M)
    assert sorted(named) == sorted(set(named)), "a module has two rows"
    assert set(named) == set(modules())


def test_the_design_notes_name_functions_that_exist_where_they_say():
    """docs/DESIGN.md's "where each idea lives" points a reader at `module.name`: each must be defined there."""
    import importlib

    section = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8").split("Where each idea lives", 1)[1]
    section = section.split("\n## ", 1)[0]
    named = re.findall(r"`(\w+)\.(\w+)`", section)
    assert len(named) >= 15, named
    elsewhere = [f"{module}.{name}" for module, name in named
                 if getattr(getattr(importlib.import_module(f"dpo_edu.{module}"), name, None), "__module__", None)
                 != f"dpo_edu.{module}"]  # missing, or only imported there
    assert not elsewhere, elsewhere
