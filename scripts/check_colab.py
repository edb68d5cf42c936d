"""Install the course the way a Colab notebook does, on the versions Colab ships, and run the notebooks.

    python scripts/check_colab.py [NOTEBOOK ...]        (`make test-colab`: every notebook)

1. A fresh venv (.venv-colab, rebuilt on every run) gets Colab's version (requirements/colab.txt) of every
   package the course may touch (those in requirements/lock.txt: the package, its extras and what they need)
   that Colab ships, their own dependencies held to Colab's versions too, and torch. torch stands in:
   requirements/torch.txt's version, this machine's CPU build, not Colab's own (a CUDA build on GPU runtimes).
2. Each notebook's first cell is run as on Colab (with `google.colab` imported), its pip commands recorded and
   run in that venv with the checkout's files in place of the git URL. torch must come out untouched: same
   version, same file, not rewritten. The packages the cell changed are printed.
3. The notebooks run in that venv in the smoke profile (pytest --nbval-lax --nbval-current-env), each after its
   own install cell; dpo_edu must be imported from the venv, not the checkout.

Prints one verdict line; exits 1 on failure.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from unittest import mock

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-colab"
COLAB = ROOT / "requirements" / "colab.txt"
TORCH = ROOT / "requirements" / "torch.txt"
LOCK = ROOT / "requirements" / "lock.txt"
SHOWN = ("torch", "transformers", "tokenizers", "huggingface-hub", "accelerate", "peft", "numpy", "sympy",
         "matplotlib", "tqdm", "ipykernel", "ipython", "jupyter-client", "pytest")
TORCH_IDENTITY = ("import os, torch; s = os.stat(torch.__file__); "
                  "print(torch.__version__, torch.__file__, s.st_ino, s.st_mtime_ns)")


class Failed(Exception):
    """A check failed; the message is the verdict, details (a command's last lines) are printed before it."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def name_of(requirement: str) -> str:
    """The canonical (PEP 503) name at the start of a requirement line."""
    return canonicalize_name(re.match(r"\s*([A-Za-z0-9_.-]+)", requirement).group(1))


def pins(path: Path) -> dict[str, str]:
    """name -> version for the name==version lines of a requirements file (markers ignored)."""
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([^\s;#]+)", line)
        if match:
            found[name_of(match.group(1))] = match.group(2)
    return found


def run(command: list[str], capture: bool = True, **kwargs) -> str:
    """Run a command and return its output (or let it print, capture=False); raise Failed if it fails."""
    done = subprocess.run(command, capture_output=capture, text=True, **kwargs)
    if done.returncode != 0:
        tail = "\n".join(((done.stdout or "") + (done.stderr or "")).strip().splitlines()[-25:])
        raise Failed(f"`{' '.join(command[:7])} ...` exited {done.returncode}", tail)
    return done.stdout


def python() -> str:
    return str(VENV / "bin" / "python")


def pip(*args: str) -> str:
    return run([python(), "-m", "pip", "--disable-pip-version-check", *args])


def freeze() -> dict[str, str]:
    listed = json.loads(pip("list", "--format=json"))
    return {name_of(item["name"]): item["version"] for item in listed}


def colab_packages_the_course_touches(colab: dict[str, str]) -> list[str]:
    """Colab's version of every package in the lock (the package, its extras and all they depend on) that Colab has."""
    return [f"{name}=={colab[name]}" for name in sorted(set(pins(LOCK)) & set(colab)) if name != "torch"]


def stand_in_conflicts(colab: dict[str, str]) -> dict[str, str]:
    """Colab's pins that the stand-in torch's own requirements reject, each with what torch requires."""
    listed = run([python(), "-c", "import importlib.metadata as m; print(*m.requires('torch'), sep='\\n')"])
    conflicts = {}
    for requirement in map(Requirement, filter(None, listed.splitlines())):
        name = canonicalize_name(requirement.name)
        applies = requirement.marker is None or requirement.marker.evaluate({"extra": ""})
        if applies and name in colab and not requirement.specifier.contains(colab[name], prereleases=True):
            conflicts[name] = str(requirement)
    return conflicts


def build_colab_venv(colab: dict[str, str], constraints: Path) -> list[str]:
    """The venv with the stand-in torch and Colab's versions; returns where it differs from Colab, and why."""
    shutil.rmtree(VENV, ignore_errors=True)
    run([sys.executable, "-m", "venv", str(VENV)])
    [torch] = [line.strip() for line in TORCH.read_text().splitlines() if line.startswith("torch==")]
    pip("install", "--quiet", torch)
    conflicts = stand_in_conflicts(colab)
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in colab.items() if name not in conflicts))
    wanted = [pin for pin in colab_packages_the_course_touches(colab) if name_of(pin) not in conflicts]
    pip("install", "--quiet", "-c", str(constraints), *wanted)
    return [f"{name} (Colab {colab[name]}; the stand-in torch needs {needs})" for name, needs in conflicts.items()]


def install_commands(notebook: Path) -> list[list[str]]:
    """The pip commands the notebook's first code cell runs on Colab, recorded instead of run."""
    cells = [cell for cell in json.loads(notebook.read_text())["cells"] if cell["cell_type"] == "code"]
    recorded = []
    fake_colab = {"google": types.ModuleType("google"), "google.colab": types.ModuleType("google.colab")}
    with mock.patch.dict(sys.modules, fake_colab), mock.patch("subprocess.run", lambda cmd, **_: recorded.append(cmd)):
        exec("".join(cells[0]["source"]), {"__name__": "__colab_install_cell__"})
    if not recorded:
        raise Failed(f"{notebook.name}: its first code cell installs nothing on Colab")
    return recorded


def shipped_copy(destination: Path) -> Path:
    """The files a clone would hold (tracked and new, not ignored), copied, so pip builds from them, not the tree."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT).split("\0")
    for relative in filter(None, listed):
        source = ROOT / relative
        if source.is_file():
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / relative)
    return destination


def localised(command: list[str], source: Path) -> list[str]:
    """The recorded command with the venv's python for Colab's, and the copied checkout for the git URL."""
    swapped = [python() if part == sys.executable else part for part in command]
    return [re.sub(r"@\s*git\+\S+", f"@ {source.as_uri()}", part) for part in swapped]


def torch_identity() -> str:
    return run([python(), "-c", TORCH_IDENTITY], cwd=tempfile.gettempdir()).strip()


def run_install_cell(commands: list[list[str]], source: Path) -> list[str]:
    """Run the cell's commands; return what they changed. Fails if torch moved."""
    before, torch_before = freeze(), torch_identity()
    for command in commands:
        run(localised(command, source))
    after, torch_after = freeze(), torch_identity()
    if torch_after != torch_before:
        raise Failed(f"the install cell changed torch (version, file, inode, mtime): {torch_before} -> {torch_after}")
    changed = [f"{name} {before[name]} -> {after[name]}" for name in sorted(before) if after.get(name) != before[name]]
    added = [f"+{name} {after[name]}" for name in sorted(set(after) - set(before))]
    return changed + added


def check_import_location() -> None:
    location = run([python(), "-c", "import dpo_edu; print(dpo_edu.__file__)"], cwd=ROOT / "notebooks").strip()
    if not location.startswith(str(VENV)):
        raise Failed(f"the notebooks would import dpo_edu from {location}, not from the installed package")


def run_notebooks(notebooks: list[Path]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as installed:
        installed.write("".join(f"{name}=={version}\n" for name, version in freeze().items()))
        installed.flush()
        # The test tool, at the lock's version; the venv's packages held where they are.
        pip("install", "--quiet", "-c", installed.name, f"nbval=={pins(LOCK)['nbval']}")
    environment = {**os.environ, "DPO_EDU_PROFILE": "smoke"}
    try:
        run([python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
             *map(str, notebooks)], capture=False, cwd=ROOT, env=environment)
    except Failed:
        names = ", ".join(notebook.name for notebook in notebooks)
        raise Failed(f"{names} failed on Colab's versions (pytest's report above)") from None


def check(notebooks: list[Path]) -> str:
    colab = pins(COLAB)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dpo-edu-colab-") as folder:
        differs = build_colab_venv(colab, Path(folder) / "colab.txt")
        shipped = freeze()
        print("Colab versions in the venv: " + ", ".join(f"{n} {shipped[n]}" for n in SHOWN if n in shipped))
        print(f"not at Colab's version: {'; '.join(differs) or 'none'}", flush=True)
        cells: dict[str, list[Path]] = {}
        for notebook in notebooks:
            cells.setdefault(json.dumps(install_commands(notebook)), []).append(notebook)
        source = shipped_copy(Path(folder) / "dpo-edu")
        for commands, group in cells.items():
            changed = run_install_cell(json.loads(commands), source)
            print(f"install cell of {', '.join(n.name for n in group)}: changed "
                  f"{'; '.join(changed) or 'nothing'}", flush=True)
            check_import_location()
            run_notebooks(group)
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    count = f"{len(notebooks)} notebook{'s' if len(notebooks) != 1 else ''}"
    return (f"{count} passed on Colab's versions (requirements/{COLAB.name}), torch {shipped['torch']} kept,"
            f" in {minutes} min {seconds} s")


def main(argv: list[str]) -> int:
    notebooks = [Path(arg).resolve() for arg in argv] or sorted((ROOT / "notebooks").glob("[0-9][0-9]*.ipynb"))
    try:
        print(f"test-colab: OK: {check(notebooks)}")
    except Failed as failure:
        if failure.details:
            print(failure.details)
        print(f"test-colab: FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
