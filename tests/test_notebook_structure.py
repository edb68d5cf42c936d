"""Every notebook opens and closes the way docs/DESIGN.md says, and its committed outputs are clean."""
from __future__ import annotations

import importlib.util
import re
import shutil
import statistics
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# NN_name.ipynb, and optional appendices NNx_name.ipynb (04b_...: sorts right after 04)
NOTEBOOKS = sorted(
    path for path in (ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb")
    if re.fullmatch(r"\d\d[a-z]?_\w+\.ipynb", path.name)
)
# Notebooks whose code lines fit a JupyterLab cell: at most MAX_CODE_LINE characters.
WRAPPED_NOTEBOOKS = [
    "00_welcome.ipynb",
    "01_bradley_terry.ipynb",
    "02_optimal_policy.ipynb",
    "03_dpo_loss.ipynb",
    "04_logprobs.ipynb",
    "04b_appendix_memory.ipynb",
    "05_bandit.ipynb",
    "05b_appendix_bandit.ipynb",
    "06_full_dpo_run.ipynb",
    "07_odpo.ipynb",
    "08_beyond.ipynb",
    "09_clinic.ipynb",
    "10_rlhf.ipynb",
]
MAX_CODE_LINE = 100


def _load_set_repo_url():
    """scripts/set_repo_url.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("set_repo_url", ROOT / "scripts" / "set_repo_url.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


set_repo_url = _load_set_repo_url()
# the badge of notebooks/NN_name.ipynb is COLAB_URL + "NN_name.ipynb"; the repository comes from pyproject.toml
COLAB_URL = ("https://colab.research.google.com/github/"
             f"{set_repo_url.owner_and_name(set_repo_url.repository_url())}/blob/main/notebooks/")


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
        assert re.search(r"assert (solved\()?check_", cell.source), f"{path.name}: a solution cell must assert its checker passes"
    last = _code(nb)[-1]
    assert "# NBVAL_IGNORE_OUTPUT" in last.source and "stopwatch" in last.source, f"{path.name}: the last cell should print device and elapsed time"


def test_short_cells(notebook):
    path, nb = notebook
    lengths = [len(cell.source.strip().splitlines()) for cell in _code(nb)]
    assert statistics.median(lengths) <= 10, f"{path.name}: median code cell is {statistics.median(lengths)} lines"


def test_committed_outputs_are_clean(notebook):
    path, nb = notebook
    for index, cell in enumerate(_code(nb)):
        if cell.metadata.get("jupyter", {}).get("source_hidden"):  # a solution: committed blank, it gives nothing away
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: solution cell {index} keeps its output"
        else:
            assert cell.execution_count is not None, f"{path.name}: code cell {index} was not executed before committing"
        assert "execution" not in cell.metadata, f"{path.name}: code cell {index} keeps execution timestamps"
        for output in cell.outputs:
            assert output.output_type != "error", f"{path.name}: code cell {index} has an error output"
    last_output = "".join(output.get("text", "") for output in _code(nb)[-1].outputs)
    assert "profile=full" in last_output, f"{path.name}: committed outputs must come from the full profile (last cell says {last_output!r})"
    assert "device=" in last_output and re.search(r"time=\d", last_output), f"{path.name}: last cell must print device and time"


def test_outputs_open_cleanly_in_jupyterlab(notebook):
    """No transformers progress bars in the outputs, and the kernel's full language_info (without it, JupyterLab
    fills it in on opening and marks the notebook modified)."""
    path, nb = notebook
    for index, cell in enumerate(_code(nb)):
        text = "".join(str(output.get("text", "")) for output in cell.outputs)
        assert "Loading weights" not in text and "Writing model shards" not in text, f"{path.name}: cell {index} shows a progress bar"
    assert {"name", "pygments_lexer", "codemirror_mode", "version"} <= set(nb.metadata.get("language_info", {})), path.name


def test_check_output_cells_exist(notebook):
    """Size-independent results (sympy verdicts, ln 2) are compared by nbval."""
    path, nb = notebook
    checked = [cell for cell in _code(nb) if "# NBVAL_CHECK_OUTPUT" in cell.source]
    if path.name[:2] in {"01", "02", "03"}:
        assert checked, f"{path.name}: no '# NBVAL_CHECK_OUTPUT' cell"
    for cell in checked:
        assert cell.outputs, f"{path.name}: a NBVAL_CHECK_OUTPUT cell has no committed output to compare"


@pytest.mark.parametrize("name", WRAPPED_NOTEBOOKS)
def test_code_lines_fit_a_jupyterlab_cell(name):
    """A line longer than a JupyterLab cell wraps (or scrolls) where the learner reads it."""
    assert (ROOT / "notebooks" / name).exists(), f"WRAPPED_NOTEBOOKS names a missing notebook: {name}"
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    long_lines = [f"cell {index}: {len(line)} chars: {line[:60]}..."
                  for index, cell in enumerate(nb.cells) if cell.cell_type == "code"
                  for line in cell.source.splitlines() if len(line) > MAX_CODE_LINE]
    assert not long_lines, f"{name}: code lines over {MAX_CODE_LINE} characters:\n" + "\n".join(long_lines)


def test_repository_url_is_the_same_everywhere():
    """Install cells, Colab badges, README.md and CONTRIBUTING.md all name pyproject.toml's repository."""
    assert set_repo_url.mismatches() == []


def _copy_of_the_named_places(tmp_path) -> Path:
    for name in ("pyproject.toml", "README.md", "CONTRIBUTING.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    return tmp_path


def test_repository_url_check_lists_a_place_that_differs(tmp_path):
    root = _copy_of_the_named_places(tmp_path)
    notebook = root / "notebooks" / "01_bradley_terry.ipynb"
    notebook.write_text(notebook.read_text().replace("git+https://github.com/", "git+https://github.com/elsewhere-"))
    readme = root / "README.md"
    readme.write_text(readme.read_text() + "\n[Colab](https://colab.research.google.com/github/someone/else/blob/main/x.ipynb)\n")
    found = set_repo_url.mismatches(root)
    assert len(found) == 2, found
    assert found[0].startswith("README.md: Colab link to someone/else")
    assert found[1].startswith("notebooks/01_bradley_terry.ipynb, cell 1: git+https://github.com/elsewhere-")


def test_set_repo_url_points_every_place_at_a_fork(tmp_path):
    root = _copy_of_the_named_places(tmp_path)
    fork = "https://github.com/a-fork/dpo-edu-copy"
    changed = set_repo_url.set_url(fork + ".git", root)
    assert set_repo_url.repository_url(root) == fork
    assert set_repo_url.mismatches(root) == []
    assert {path.name for path in changed} >= {"pyproject.toml", "CONTRIBUTING.md", *(path.name for path in NOTEBOOKS)}
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert f"/github/a-fork/dpo-edu-copy/blob/main/notebooks/{path.name}" in nb.cells[0].source, path.name
        assert f"git+{fork}" in _code(nb)[0].source, path.name
    with pytest.raises(ValueError, match="not a GitHub repository URL"):
        set_repo_url.set_url("https://gitlab.com/a-fork/dpo-edu", root)


def test_repository_cites_only_documents_it_contains():
    """A Markdown document that the code or the docs name (upper-case, as README.md) is in the repository."""
    documents = {path.name for path in ROOT.rglob("*.md") if ".venv" not in path.parts}
    folders = ["dpo_edu", "tests", "scripts", "notebooks", "docs", "data", "benchmarks", ".ci"]
    files = [path for path in ROOT.iterdir() if path.is_file()]
    files += [path for folder in folders if (ROOT / folder).is_dir() for path in (ROOT / folder).rglob("*")
              if path.is_file() and path.suffix in {".py", ".md", ".ipynb", ".toml", ".yml", ""}]
    missing = set()
    for path in files:
        text = path.read_text(errors="ignore")
        missing |= {(path.relative_to(ROOT).as_posix(), name) for name in re.findall(r"\b[A-Z][A-Z_]+\.md\b", text)
                    if name not in documents}
    assert not missing, f"files cite documents the repository does not contain: {sorted(missing)}"
