"""Every notebook opens and closes the way COURSE.md says, and its committed outputs are clean."""
from __future__ import annotations

import re
import statistics
from pathlib import Path

import nbformat
import pytest

# NN_name.ipynb, and optional appendices NNx_name.ipynb (04b_...: sorts right after 04)
NOTEBOOKS = sorted(
    path for path in (Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]*_*.ipynb")
    if re.fullmatch(r"\d\d[a-z]?_\w+\.ipynb", path.name)
)
COLAB_URL = "https://colab.research.google.com/github/dpo-edu/dpo-edu/blob/main/notebooks/"


def test_notebooks_exist():
    numbers = [path.name.split("_")[0] for path in NOTEBOOKS]  # "04", "04b", ...
    assert numbers[:4] == ["00", "01", "02", "03"], numbers
    assert len(set(numbers)) == len(numbers), f"two notebooks share a number: {numbers}"


def _code(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _first_index(cells, predicate) -> int:
    return next((index for index, cell in enumerate(cells) if predicate(cell.source)), -1)


@pytest.fixture(params=NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_opening_header(notebook):
    path, nb = notebook
    header = nb.cells[0]
    assert header.cell_type == "markdown", f"{path.name}: the first cell must be the markdown header"
    text = header.source
    assert COLAB_URL + path.name in text and "colab-badge.svg" in text, f"{path.name}: no Colab badge pointing at itself"
    assert re.search(r"^# \S", text, re.M), f"{path.name}: no '# ' title"
    for heading in ("You will learn", "Prerequisites", "Runtime"):
        assert heading in text, f"{path.name}: header lacks '{heading}'"
    table_rows = [line for line in text.splitlines() if line.startswith("|")]
    for profile in ("smoke", "full"):
        row = next((line for line in table_rows if profile in line), None)
        assert row is not None, f"{path.name}: runtime table has no {profile} row"
        assert re.search(r"\d+\s*(s|min)", row), f"{path.name}: the {profile} row has no measured time: {row}"


def test_setup_cells_in_order(notebook):
    path, nb = notebook
    code = _code(nb)
    install = _first_index(code, lambda s: '"google.colab" in sys.modules' in s)
    versions = _first_index(code, lambda s: "# NBVAL_IGNORE_OUTPUT" in s and "print_versions()" in s)
    parameters = _first_index(code, lambda s: "get_profile(" in s)
    seeding = _first_index(code, lambda s: "seed_everything(" in s and "get_device(" in s)
    assert install == 0, f"{path.name}: the first code cell must be the guarded Colab install"
    assert "torch" not in re.sub(r"#.*", "", code[0].source).replace("import", ""), f"{path.name}: the Colab cell must not install torch"
    assert 0 < versions < parameters <= seeding, f"{path.name}: expected install, versions, parameters, seeding/device in that order (got {install}, {versions}, {parameters}, {seeding})"
    assert seeding <= 4, f"{path.name}: seeding and device selection should come early (code cell {seeding})"


def test_closing_summary_and_exercises(notebook):
    path, nb = notebook
    markdown = [cell.source for cell in nb.cells if cell.cell_type == "markdown"]
    assert any(re.search(r"^## Summary", s, re.M) for s in markdown), f"{path.name}: no '## Summary'"
    assert any(re.search(r"^## Exercises", s, re.M) for s in markdown), f"{path.name}: no '## Exercises'"
    solutions = [cell for cell in _code(nb) if cell.metadata.get("jupyter", {}).get("source_hidden")]
    assert solutions, f"{path.name}: no collapsed solution cell"
    for cell in solutions:
        assert "dpo_edu.exercises" in cell.source or re.search(r"\bcheck_\d\d_", cell.source), f"{path.name}: a solution cell calls no checker"
        assert "assert check_" in cell.source, f"{path.name}: a solution cell must assert its checker passes"
    last = _code(nb)[-1]
    assert "# NBVAL_IGNORE_OUTPUT" in last.source and "stopwatch" in last.source, f"{path.name}: the last cell should print device and elapsed time"


def test_short_cells(notebook):
    path, nb = notebook
    lengths = [len(cell.source.strip().splitlines()) for cell in _code(nb)]
    assert statistics.median(lengths) <= 10, f"{path.name}: median code cell is {statistics.median(lengths)} lines"


def test_committed_outputs_are_clean(notebook):
    path, nb = notebook
    for index, cell in enumerate(_code(nb)):
        assert cell.execution_count is not None, f"{path.name}: code cell {index} was not executed before committing"
        assert "execution" not in cell.metadata, f"{path.name}: code cell {index} keeps execution timestamps"
        for output in cell.outputs:
            assert output.output_type != "error", f"{path.name}: code cell {index} has an error output"
    last_output = "".join(output.get("text", "") for output in _code(nb)[-1].outputs)
    assert "profile=full" in last_output, f"{path.name}: committed outputs must come from the full profile (last cell says {last_output!r})"
    assert "device=" in last_output and re.search(r"time=\d", last_output), f"{path.name}: last cell must print device and time"


def test_check_output_cells_exist(notebook):
    """Size-independent results (sympy verdicts, ln 2) are compared by nbval."""
    path, nb = notebook
    checked = [cell for cell in _code(nb) if "# NBVAL_CHECK_OUTPUT" in cell.source]
    if path.name[:2] in {"01", "02", "03"}:
        assert checked, f"{path.name}: no '# NBVAL_CHECK_OUTPUT' cell"
    for cell in checked:
        assert cell.outputs, f"{path.name}: a NBVAL_CHECK_OUTPUT cell has no committed output to compare"
