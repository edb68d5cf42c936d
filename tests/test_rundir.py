"""Nothing a user made is lost: what --overwrite may replace, when, and what --resume remembers (no model needed)."""
import json
import os
from pathlib import Path

import pytest

from dpo_edu.cli import main
from dpo_edu.rundir import LOCK, MARKER, RunFolder, RunFolderError, check_writable, foreign_entries, stopped_message
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
    with RunFolder.check(tmp_path, "run") as folder:
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


def no_model(monkeypatch):
    """Make loading the model fail the test: each refusal below must come before any work."""
    from dpo_edu import frontier as frontier_module
    from dpo_edu import stages

    for module in (stages, frontier_module):  # the set-up's model (stage 0), and the sweep's fresh copies
        monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("the model loaded"))


def listing(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def an_interrupted_run(folder: Path) -> Path:
    a_finished_run(folder)
    (folder / "summary.json").unlink()
    (folder / "pairs.jsonl").write_text("{}\n")
    return folder


@pytest.mark.parametrize("command", ["run", "frontier"])
def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path, monkeypatch, capsys, command):
    """`--out mythesis --resume` once replaced the thesis's report.md; `--out notebooks --resume` wrote a run into it."""
    no_model(monkeypatch)
    thesis = tmp_path / "mythesis"
    thesis.mkdir()
    (thesis / "report.md").write_text("# My thesis")  # a name a run writes, so no foreign-file check can catch it
    notebooks = tmp_path / "notebooks"
    users_work(notebooks)
    for folder in (thesis, notebooks):
        before = listing(folder)
        assert main([command, "--profile", "smoke", "--out", str(folder), "--resume", "--quiet"]) == 2
        error = capsys.readouterr().err.strip()
        assert f"{folder} is not a dpo-edu run folder (no {MARKER}" in error and "\n" not in error, error
        assert listing(folder) == before  # no file changed, none added (not even a lock file)


def test_a_folder_being_written_is_locked_and_named_with_its_holder(tmp_path, monkeypatch, capsys):
    """Two runs on one folder: the second fails at once, naming the folder and the pid and command of the first."""
    no_model(monkeypatch)
    run = an_interrupted_run(tmp_path / "run")
    before = listing(run)
    with RunFolder.check(run, "run", resume=True):
        assert (run / LOCK).read_text().startswith(f"pid {os.getpid()}: ")
        for flags in (["--resume"], ["--profile", "smoke", "--overwrite"]):
            assert main(["run", "--out", str(run), "--quiet", *flags]) == 2
            error = capsys.readouterr().err.strip()
            assert f"{run} is being written by another dpo-edu run (pid {os.getpid()}: " in error and "\n" not in error
        with pytest.raises(RunFolderError, match="being written by another dpo-edu run"):
            RunFolder.check(run, "frontier", overwrite=True)
    assert listing(run) == before  # the lock file goes with the lock


def test_overwrite_keeps_the_lock_while_the_old_run_is_moved_aside(tmp_path):
    old = a_finished_run(tmp_path / "run")
    with RunFolder.check(old, "run", overwrite=True) as first:
        first.start(profile="smoke", model=None)
        with pytest.raises(RunFolderError, match="being written by another"):  # the new folder is locked as it appears
            RunFolder.check(old, "run", overwrite=True)
        first.abandon()  # the old run comes back, still locked by the run that moved it
        assert (old / "summary.json").is_file()
        with pytest.raises(RunFolderError, match="being written by another"):
            RunFolder.check(old, "run", overwrite=True)
    with RunFolder.check(old, "run", overwrite=True) as second:
        second.start(profile="smoke", model=None)
        (old / "pairs.jsonl").write_text("{}\n")
        second.keep()
        assert not (tmp_path / "run.old").exists()
    assert sorted(p.name for p in old.iterdir()) == [MARKER, "pairs.jsonl"]


def test_a_killed_run_leaves_no_lock_behind(tmp_path):
    """flock: the kernel lets go of a dead process's lock (kill -9 included), so a stale lock file blocks nobody."""
    import signal
    import subprocess
    import sys

    run = an_interrupted_run(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dpo_edu.rundir import RunFolder; "
                               "RunFolder.check(sys.argv[1], 'run', resume=True); print('locked', flush=True); time.sleep(60)",
                               str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderError, match=rf"being written by another dpo-edu run \(pid {holder.pid}: -c "):
            RunFolder.check(run, "run", resume=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / LOCK).is_file()  # left by the killed process, but no longer locked
    with RunFolder.check(run, "run", resume=True):
        pass


def test_resume_names_the_flag_as_typed_and_its_recorded_value(tmp_path):
    folder = RunFolder.check(tmp_path / "run", "run")
    folder.start(profile="smoke", model=None, precision="auto", heldout_fraction=0.1, loss={"max_length": 96})
    for value in (0.5, 0):  # a 0 is a value like any other, not "not given"
        with pytest.raises(RunFolderError, match=r"was started with --heldout-fraction 0.1; resume it without --heldout-fraction$"):
            folder.resume_options(None, None, heldout_fraction=value)
    with pytest.raises(RunFolderError, match=r"was started without --max-prompt-length; resume it without --max-prompt-length$"):
        folder.resume_options(None, None, loss={"max_prompt_length": 48})
    with pytest.raises(RunFolderError, match=r"was started with --max-length 96; resume it without --max-length$"):
        folder.resume_options(None, None, loss={"max_length": 64})
    assert folder.resume_options(None, None, heldout_fraction=0.1, loss={"max_length": 96}) == ("smoke", None, 0.1, {"max_length": 96})
    folder.release()


def test_overwrite_replaces_a_pairs_run_and_one_stopped_while_scoring(tmp_path):
    """A --pairs run writes heldout_pairs.jsonl, a sampling run samples.json first: both are a run's own files."""
    run = a_finished_run(tmp_path / "run")
    (run / "heldout_pairs.jsonl").write_text("{}\n")
    (run / "samples.json").write_text("{}")
    assert foreign_entries(run) == []
    with RunFolder.check(run, "run", overwrite=True):
        pass


def test_open_run_is_the_one_set_up_of_run_and_frontier(tmp_path):
    """Stage 0: a new run gets the profile by name and precision "auto"; its marker starts with profile and model;
    a resumed run gets every option back from the marker and refuses one given differently; the folder is locked
    only inside the `with` block."""
    from dpo_edu.config import get_profile
    from dpo_edu.stages import open_run

    out = tmp_path / "sweep"
    with open_run(out, "frontier", "smoke", None, overwrite=False, resume=False, precision=None,
                  dense=True, betas=[0.1]) as opened:
        assert (opened.profile, opened.precision) == (get_profile("smoke"), "auto")
        assert opened.options == {"dense": True, "betas": [0.1]}
        opened.start(dense=True, precision=opened.precision, betas=[0.1])
        with pytest.raises(RunFolderError, match="is being written by another dpo-edu run"):
            RunFolder.check(out, "frontier", resume=True)
    marker = json.loads((out / MARKER).read_text())
    assert list(marker)[:5] == ["kind", "format", "created", "profile", "model"]
    with open_run(out, "frontier", None, None, overwrite=False, resume=True, precision=None,
                  dense=False, betas=None) as resumed:
        assert (resumed.profile.name, resumed.precision) == ("smoke", "auto")
        assert resumed.options == {"dense": True, "betas": [0.1]}
        resumed.start(dense=False)  # a resumed run keeps the marker it has
    assert json.loads((out / MARKER).read_text()) == marker
    with pytest.raises(RunFolderError, match="resume it without --betas"):
        with open_run(out, "frontier", None, None, overwrite=False, resume=True, precision=None, betas=[0.5]):
            pass
