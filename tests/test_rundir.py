"""Nothing a user made is lost: what --overwrite may replace, when, and what --resume remembers (no model needed)."""
import json
import os
from pathlib import Path

import pytest

from dpo_edu.cli import main
from dpo_edu.rundir import MARKER, RunFolder, RunFolderError, check_writable, foreign_entries, stopped_message
from dpo_edu.utils import staged


def users_work(folder: Path) -> dict[str, str]:
    """A thesis and a source tree: what `dpo-edu run --out . --overwrite` once deleted."""
    (folder / "src").mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("\\chapter{DPO}")
    (folder / "src" / "main.py").write_text("print('mine')")
    return {"thesis.tex": "\\chapter{DPO}", "src/main.py": "print('mine')"}


def assert_intact(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        assert (folder / name).read_text() == text, name


def a_finished_run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(json.dumps({"kind": "run", "profile": "smoke", "model": None}))
    (folder / "summary.json").write_text("{}")
    (folder / "plots").mkdir()
    (folder / "plots" / "training.png").write_bytes(b"png")
    return folder


@pytest.mark.parametrize("out", [".", "..", "{home}", "/"])
def test_overwrite_refuses_the_working_directory_its_parents_home_and_root(tmp_path, monkeypatch, capsys, out):
    work = tmp_path / "home" / "me" / "thesis"
    files = users_work(work)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home" / "me"))
    out = out.format(home=tmp_path / "home" / "me")
    assert main(["run", "--profile", "smoke", "--out", out, "--overwrite", "--quiet"]) == 2
    assert "--overwrite refuses" in capsys.readouterr().err
    assert_intact(work, files)


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    files = users_work(tmp_path / "notes")
    assert main(["run", "--profile", "smoke", "--out", str(tmp_path / "notes"), "--overwrite", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "src, thesis.tex, which no dpo-edu run writes" in error
    assert_intact(tmp_path / "notes", files)


def test_overwrite_refuses_a_run_folder_holding_a_users_file(tmp_path):
    run = a_finished_run(tmp_path / "run")
    (run / "my-notes.txt").write_text("keep me")
    with pytest.raises(RunFolderError, match="my-notes.txt"):
        RunFolder.check(run, "run", overwrite=True)


def test_a_run_stopped_while_writing_a_file_is_still_a_run(tmp_path):
    """The temporaries `staged` writes beside pairs.jsonl, policy/, metrics.jsonl are a run's; a user's hidden file isn't."""
    run = a_finished_run(tmp_path / "run")
    with (staged(run / "pairs.jsonl"), staged(run / "policy", folder=True), staged(run / "metrics.jsonl"),
          staged(run / "pairs_seed3.jsonl")):
        assert len([path for path in run.iterdir() if path.name.startswith(".") and path.name != MARKER]) == 4
        assert foreign_entries(run) == []
        RunFolder.check(run, "run", overwrite=True)
    (run / ".my-notes.md").write_text("mine")
    (run / ".plots-of-mine").mkdir()
    assert foreign_entries(run) == [".my-notes.md", ".plots-of-mine"]


def test_a_replaced_run_is_kept_until_the_new_one_has_a_result(tmp_path):
    old = a_finished_run(tmp_path / "run")
    folder = RunFolder.check(old, "run", overwrite=True)
    folder.start(profile="smoke", model=None)
    assert json.loads((old / MARKER).read_text())["kind"] == "run" and not (old / "summary.json").exists()
    assert (tmp_path / "run.old" / "summary.json").is_file()  # moved aside, not deleted
    (old / "pairs.jsonl").write_text("{}\n")
    folder.keep()
    assert not (tmp_path / "run.old").exists() and (old / "pairs.jsonl").is_file()


def test_a_run_that_fails_before_its_first_result_puts_the_old_one_back(tmp_path):
    old = a_finished_run(tmp_path / "run")
    (tmp_path / "run.old").mkdir()  # a name taken already: the old run goes to run.old-2
    folder = RunFolder.check(old, "run", overwrite=True)
    folder.start(profile="smoke", model=None)
    assert (tmp_path / "run.old-2" / "summary.json").is_file()
    folder.abandon()
    assert (old / "summary.json").is_file() and (old / "plots" / "training.png").is_file() and not (tmp_path / "run.old-2").exists()


def test_a_new_folder_is_removed_when_nothing_was_written(tmp_path):
    folder = RunFolder.check(tmp_path / "new" / "run", "run")
    folder.start(profile="smoke", model=None)
    folder.abandon()
    assert not (tmp_path / "new" / "run").exists()
    assert "nothing was kept" in stopped_message(tmp_path / "new" / "run", "run")


def test_an_empty_folder_is_used_and_left_in_place(tmp_path):
    folder = RunFolder.check(tmp_path, "run")
    folder.start(profile="smoke", model=None)
    folder.abandon()
    assert tmp_path.is_dir() and not any(tmp_path.iterdir())


def test_unwritable_out_fails_before_any_work(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        check_writable(tmp_path / "a-file" / "run")
    assert main(["run", "--profile", "smoke", "--out", str(tmp_path / "a-file" / "run"), "--quiet"]) == 2
    assert "choose another --out" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, a file system nobody can write to")
def test_read_only_out_fails_before_any_work():
    with pytest.raises(RunFolderError, match="cannot write in /proc"):
        check_writable(Path("/proc/dpo-edu-run"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_read_only_folder_fails_before_any_work(tmp_path):
    (tmp_path / "locked").mkdir(mode=0o555)
    with pytest.raises(RunFolderError, match="cannot write"):
        check_writable(tmp_path / "locked" / "run")


def test_resume_of_a_folder_that_does_not_exist_says_so(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "nope"), "--resume", "--quiet"]) == 2
    assert "does not exist: there is nothing to resume" in capsys.readouterr().err
    assert main(["frontier", "--out", str(tmp_path / "nope"), "--resume", "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_uses_the_recorded_profile_and_refuses_another(tmp_path):
    folder = RunFolder.check(tmp_path / "run", "frontier")
    folder.start(profile="smoke", model=None, dense=True)
    assert folder.resume_options(None, None, dense=False) == ("smoke", None, True)
    with pytest.raises(RunFolderError, match="smoke-profile frontier; resume it without --profile"):
        folder.resume_options("full", None)
    with pytest.raises(RunFolderError, match="without --model"):
        folder.resume_options(None, "some/model")
    with pytest.raises(RunFolderError, match="made by dpo-edu frontier, not dpo-edu run"):
        RunFolder.check(tmp_path / "run", "run", resume=True)


def test_the_stopped_message_reads_the_disk(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    assert "holds nothing to resume" in stopped_message(out, "run")
    (out / "pairs.jsonl").write_text("{}\n")
    assert f"dpo-edu run --out {out} --resume" in stopped_message(out, "run")
    (out / "checkpoints" / "latest").write_text("step-000004\n")
    message = stopped_message(out, "run")
    assert "step-000004" in message and "--resume" in message and "--overwrite" not in message


def test_resume_keeps_the_recorded_precision_and_refuses_another(tmp_path):
    folder = RunFolder.check(tmp_path / "run", "run")
    folder.start(profile="smoke", model=None, precision="fp32")
    assert folder.resume_options(None, None, precision=None) == ("smoke", None, "fp32")
    assert folder.resume_options(None, None, precision="fp32") == ("smoke", None, "fp32")
    with pytest.raises(RunFolderError, match="was started with --precision fp32; resume it without --precision"):
        folder.resume_options(None, None, precision="bf16")
