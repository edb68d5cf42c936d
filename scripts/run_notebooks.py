"""Execute the course notebooks top to bottom, time them, and (optionally) keep the outputs.

    python scripts/run_notebooks.py --profile full --write      # refresh committed outputs
    python scripts/run_notebooks.py --profile smoke             # time only, files untouched
    python scripts/run_notebooks.py --profile smoke --update-header   # ... and write the time into each header

`--update-header` rewrites the notebook's runtime-table row for the profile
(`| smoke | 12 s | ... |`) with the time just measured, so the tables hold
measurements, never guesses.

Written outputs are normalised so that re-running changes only what really
changed: execution timestamps are dropped, cell ids are stable, the kernel
metadata is the plain python3 one, and `language_info` is the full record a
kernel writes (a notebook without it opens in JupyterLab as "modified").
Collapsed solution cells are committed without outputs, so that they reveal
nothing until the learner runs them.

    python scripts/run_notebooks.py --normalise-only     # apply the above without executing
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# What ipykernel reports for Python 3; a kernel's own record (with its version) wins when there is one.
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": "{}.{}.{}".format(*sys.version_info[:3]),
}


def course_notebooks() -> list[Path]:
    """notebooks/NN_name.ipynb and the optional appendices NNx_name.ipynb, in course order (04, 04b, 05)."""
    return sorted(path for path in NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb")
                  if re.fullmatch(r"\d\d[a-z]?_\w+\.ipynb", path.name))


def is_solution(cell: nbformat.NotebookNode) -> bool:
    """A collapsed "#@title Solution" cell (its source is hidden in JupyterLab and Colab)."""
    return cell.cell_type == "code" and bool(cell.metadata.get("jupyter", {}).get("source_hidden"))


def normalise(notebook: nbformat.NotebookNode, stem: str) -> None:
    language_info = dict(notebook.metadata.get("language_info", {}))
    if "pygments_lexer" not in language_info:  # not from a kernel: use ipykernel's record
        language_info = LANGUAGE_INFO
    notebook.metadata = {
        "kernelspec": KERNELSPEC,
        "language_info": language_info,
        "colab": {"provenance": []},
        "accelerator": "GPU",
    }
    for index, cell in enumerate(notebook.cells):
        cell.id = f"{stem[:2]}-{index:03d}"
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if is_solution(cell):  # a solution's output would give the answer away
            cell.outputs = []
            cell.execution_count = None


def update_header(notebook: nbformat.NotebookNode, profile: str, seconds: float) -> None:
    """Put `seconds` in the CPU column of the header's `| profile | ... |` row."""
    header = notebook.cells[0]
    lines = header.source.splitlines()
    rows = [index for index, line in enumerate(lines) if line.replace(" ", "").startswith(f"|{profile}|")]
    if len(rows) != 1:
        raise ValueError(f"expected one '| {profile} |' row in the header's runtime table, found {len(rows)}")
    columns = lines[rows[0]].split("|")
    columns[2] = f" {seconds:.0f} s "
    lines[rows[0]] = "|".join(columns)
    header.source = "\n".join(lines)


def run(path: Path, profile: str, write: bool, timeout: int, header: bool = False) -> float:
    notebook = nbformat.read(path, as_version=4)
    os.environ["DPO_EDU_PROFILE"] = profile
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    if write:
        normalise(notebook, path.stem)
    if header:
        update_header(notebook, profile, seconds)
    if write:
        nbformat.write(notebook, path)
    elif header:  # keep the committed outputs: change only the header cell
        on_disk = nbformat.read(path, as_version=4)
        on_disk.cells[0].source = notebook.cells[0].source
        nbformat.write(on_disk, path)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=("smoke", "full"), default="full")
    parser.add_argument("--write", action="store_true", help="keep the outputs in the notebook files")
    parser.add_argument("--update-header", action="store_true", help="write the measured time into the header's runtime table")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument("--normalise-only", action="store_true",
                        help="normalise metadata and clear solution outputs without executing anything")
    parser.add_argument("notebooks", nargs="*", type=Path,
                        help="default: every notebooks/NN_*.ipynb and appendix NNx_*.ipynb (04b_...)")
    args = parser.parse_args()
    paths = args.notebooks or course_notebooks()
    if args.normalise_only:
        for path in paths:
            notebook = nbformat.read(path, as_version=4)
            normalise(notebook, path.stem)
            nbformat.write(notebook, path)
        return 0
    print(f"| notebook | {args.profile} (s) |\n|---|---|")
    for path in paths:
        seconds = run(path, args.profile, args.write, args.timeout, args.update_header)
        print(f"| {path.name} | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
