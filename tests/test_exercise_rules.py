"""The course's exercise rules, counted from the notebooks' cell tags (dpo_edu.exercises explains them).

Each exercise is a stub cell tagged `exercise:<kind>` followed by its collapsed solution. At least two thirds of all
exercises ask the learner to predict, derive or diagnose (not to re-type code shown above them), every notebook from
01 on has at least one such exercise, and no solution prints its answer when a learner runs the whole notebook.
"""
from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))
MAIN_NOTEBOOKS = [path for path in NOTEBOOKS if re.fullmatch(r"\d\d_\w+\.ipynb", path.name)]  # not the appendices
THINKING = {"predict", "derive", "diagnose"}
# Notebooks allowed to break the rules for now, with the reason (xfail strict: the mark must go when they comply)
PENDING: dict[str, str] = {}


def _params(paths):
    return [pytest.param(path, id=path.name, marks=[pytest.mark.xfail(strict=True, reason=PENDING[path.name])]
                         if path.name in PENDING else []) for path in paths]
KINDS = THINKING | {"implement"}


def _is_solution(cell) -> bool:
    return cell.cell_type == "code" and cell.source.startswith("#@title Solution")


def exercises(path: Path) -> list[tuple[str, object, object]]:
    """(kind, stub cell, solution cell) of each exercise in the notebook, in order."""
    cells = nbformat.read(path, as_version=4).cells
    found = []
    for index, cell in enumerate(cells):
        tags = [tag for tag in cell.metadata.get("tags", []) if tag.startswith("exercise:")]
        if not tags:
            continue
        assert len(tags) == 1, f"{path.name} cell {index}: one exercise kind per cell, got {tags}"
        kind = tags[0].split(":", 1)[1]
        assert kind in KINDS, f"{path.name} cell {index}: exercise kind {kind!r} is not one of {sorted(KINDS)}"
        solution = cells[index + 1] if index + 1 < len(cells) else None
        assert solution is not None and _is_solution(solution), (
            f"{path.name} cell {index}: an exercise's stub is followed by its collapsed solution cell")
        found.append((kind, cell, solution))
    return found


@pytest.mark.parametrize("path", _params(NOTEBOOKS))
def test_every_solution_belongs_to_a_tagged_exercise_and_checks_itself_silently(path):
    cells = nbformat.read(path, as_version=4).cells
    tagged = {solution.id for _, _, solution in exercises(path)}
    for index, cell in enumerate(cells):
        if not _is_solution(cell):
            continue
        assert cell.id in tagged, f"{path.name} cell {index}: a solution whose stub (the cell above) has no exercise tag"
        assert cell.metadata.get("jupyter", {}).get("source_hidden"), f"{path.name} cell {index}: solution not collapsed"
        code = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("#"))
        assert re.search(r"^assert solved\(check_\w+", code, re.M), (
            f"{path.name} cell {index}: a solution ends with `assert solved(check_..., ...)`, which prints nothing "
            "when it passes")
        assert "print(" not in code and "display(" not in code, (
            f"{path.name} cell {index}: a solution prints nothing, so running the notebook shows no answer")
        assert not re.search(r"^check_\w+\(", code, re.M), (
            f"{path.name} cell {index}: a bare checker call prints its verdict; use `assert solved(...)`")


@pytest.mark.parametrize("path", _params(MAIN_NOTEBOOKS[1:]))
def test_every_notebook_after_00_makes_the_learner_think(path):
    kinds = [kind for kind, _, _ in exercises(path)]
    assert THINKING & set(kinds), f"{path.name}: exercises {kinds}: none asks to predict, derive or diagnose"


def test_two_thirds_of_all_exercises_ask_to_predict_derive_or_diagnose():
    kinds = [kind for path in NOTEBOOKS for kind, _, _ in exercises(path)]
    thinking = sum(kind in THINKING for kind in kinds)
    assert len(kinds) >= 2 * len(MAIN_NOTEBOOKS), f"only {len(kinds)} exercises in {len(MAIN_NOTEBOOKS)} notebooks"
    assert Fraction(thinking, len(kinds)) >= Fraction(2, 3), f"{thinking} of {len(kinds)} exercises: {kinds}"
