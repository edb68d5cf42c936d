"""Every row of the README's "What happens when…" table names tests that exist: the table cannot promise what nothing checks."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fault_rows() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## What happens when…")[1].split("\n## ")[0]
    return [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| fault |")]


def named_tests(cell: str, file: str | None) -> list[tuple[str, str]]:
    """`test_x.py::test_a`, `::test_b` (the same file as before) -> [(file, test), ...]."""
    found = []
    for reference in re.findall(r"`([\w.]*::\w+)`", cell):
        name, test = reference.split("::")
        file = name or file
        found.append((file, test))
    return found


def test_every_fault_row_names_tests_that_exist():
    rows = fault_rows()
    assert len(rows) >= 30
    file, missing = None, []
    for row in rows:
        cell = row.rstrip(" |").rsplit(" | ", 1)[-1]
        tests = named_tests(cell, file)
        assert tests or cell == "the same test", f"a row without a test: {row[:80]}"
        for file, test in tests:
            source = ROOT / "tests" / file
            if not source.is_file() or not re.search(rf"^def {test}\(", source.read_text(encoding="utf-8"), re.M):
                missing.append(f"{file}::{test}")
    assert not missing, f"the README names tests that do not exist: {missing}"
