"""`dpo-edu run` end to end on the real model at smoke size: the run directory, its numbers, and no overwrite."""
import json
import math

import pytest

from dpo_edu.cli import main
from dpo_edu.rundir import MARKER


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    assert main(["run", "--profile", "smoke", "--out", str(out), "--quiet"]) == 0
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert steps >= 3, f"the Ctrl-C tests stop the run at steps 2 and 3, but the smoke profile gives {steps} steps"
    return out


def test_the_run_directory_has_every_artifact(run_dir):
    for name in (MARKER, "pairs.jsonl", "metrics.jsonl", "summary.json", "report.md", "policy/config.json", "policy/model.safetensors",
                 "plots/training.png", "plots/heldout.png", "plots/reward_histograms.png"):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("**/*.tmp"))


def test_pairs_follow_trl_names_and_are_ordered_by_score(run_dir):
    pairs = [json.loads(line) for line in (run_dir / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert pairs
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected", "chosen_score", "rejected_score"}
        assert pair["chosen_score"] - pair["rejected_score"] >= 0.1


def test_metrics_and_summary_agree_and_start_from_the_reference(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [row["step"] for row in rows] == list(range(1, summary["steps"] + 1))
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4) and rows[0]["rewards/margins"] == pytest.approx(0, abs=1e-4)
    assert summary["step0_loss"] == rows[0]["loss"]
    evaluated = [row["step"] for row in rows if "eval/kl" in row]
    assert evaluated[-1] == summary["steps"] and [e["step"] for e in summary["evaluations"]] == [0, *evaluated]
    first = summary["evaluations"][0]
    assert first["kl"] == 0.0 and summary["final"]["kl"] == rows[-1]["eval/kl"]
    assert 0 <= summary["final"]["win_rate"] <= 1


def test_the_run_records_its_arithmetic(run_dir):
    from dpo_edu.precision import cpu_bf16_supported

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["precision"] == ("bf16" if cpu_bf16_supported() else "fp32")
    assert summary["train_config"]["mixed_precision"] == "auto"
    assert json.loads((run_dir / MARKER).read_text())["precision"] == "auto"
    expected = "bf16 autocast (float32 weights and log-probs)" if cpu_bf16_supported() else "Arithmetic: float32."
    assert expected in (run_dir / "report.md").read_text(encoding="utf-8")


def test_report_shows_the_table_plots_and_five_samples(run_dir):
    report = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "| win rate against the reference |" in report and "(ln 2 = 0.6931)" in report
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    moved = json.loads((run_dir / "summary.json").read_text())["implicit_rewards"]
    assert moved["steps_chosen_negative"] == sum(row["rewards/chosen"] < 0 for row in rows)
    assert f"chosen {moved['chosen_last']:+.3f}, rejected {moved['rejected_last']:+.3f}" in report
    assert report.count("](plots/") == 3
    samples_table = report.split("## Samples before and after")[1]
    assert samples_table.count("\n|") == 2 + 5


def test_the_trained_policy_loads_and_differs_from_the_reference(run_dir, real_model):
    import torch

    from dpo_edu.models import load_model

    policy, _ = load_model(run_dir / "policy", device="cpu")
    reference, _ = real_model
    name, weight = next(iter(policy.state_dict().items()))
    assert not torch.equal(weight, reference.state_dict()[name]), name


def test_an_existing_run_is_never_overwritten_without_the_flag(run_dir, capsys):
    before = (run_dir / "summary.json").read_bytes()
    assert main(["run", "--profile", "smoke", "--out", str(run_dir), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run_dir / "summary.json").read_bytes() == before


def test_ctrl_c_then_resume_gives_the_uninterrupted_run(run_dir, tmp_path, monkeypatch, capsys, ctrl_c):
    """Ctrl-C during training saves a checkpoint (exit code 130); --resume finishes with the same metrics and report."""
    from dpo_edu import stages  # train_stage calls train_dpo

    out = tmp_path / "interrupted"
    put_back = ctrl_c(stages, step=2)
    assert main(["run", "--profile", "smoke", "--out", str(out), "--quiet"]) == 130
    error = capsys.readouterr().err
    assert "interrupted after step 2" in error and f"dpo-edu run --out {out} --resume" in error
    assert (out / "checkpoints" / "latest").is_file() and not (out / "summary.json").exists()
    put_back()
    monkeypatch.setenv("DPO_EDU_PROFILE", "full")  # --resume uses the run's own profile, not the environment's
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 0
    assert not (out / "checkpoints").exists()  # removed once the run finished

    def metrics(folder):
        return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_second"}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]

    assert metrics(out) == metrics(run_dir)
    whole, resumed = (json.loads((folder / "summary.json").read_text()) for folder in (run_dir, out))
    assert resumed["final"] == whole["final"] and resumed["evaluations"] == whole["evaluations"] and resumed["resumed"]
    assert main(["run", "--profile", "smoke", "--out", str(out), "--resume", "--quiet"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_bad_options_fail_before_any_work(tmp_path, capsys):
    assert main(["run", "--profile", "smoke", "--out", str(tmp_path / "x"), "--model", str(tmp_path / "no-such-model"), "--quiet"]) == 2
    assert "no-such-model" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["run", "--profile", "smoke", "--out", str(tmp_path / "y"), "--resume", "--quiet"]) == 2
    assert "does not exist: there is nothing to resume" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path / "z"), "--resume", "--overwrite"]) == 2


def metrics_without_timing(folder):
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_second"}
            for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_double_ctrl_c_a_damaged_checkpoint_and_resuming_from_the_pairs(run_dir, tmp_path, monkeypatch, capsys, ctrl_c):
    """A second Ctrl-C stops at once: the message points at --resume (never --overwrite). A truncated checkpoint is
    named before the model loads; without the checkpoint, --resume trains again from the saved pairs."""

    from dpo_edu import stages  # train_stage calls train_dpo

    out = tmp_path / "twice"
    put_back = ctrl_c(stages, step=3, times=2)  # the first: finish the step and save; the second: stop now
    assert main(["run", "--profile", "smoke", "--out", str(out), "--quiet"]) == 130
    error = capsys.readouterr().err
    assert "step-000002" in error and "--resume" in error and "--overwrite" not in error
    put_back()

    weights = out / "checkpoints" / "step-000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a disk that filled up, a copy cut short
    monkeypatch.setattr(stages, "load_model", lambda *a, **k: pytest.fail("the model loaded before the checkpoint was checked"))
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"{weights} is damaged (1,000 bytes" in error and "Delete" in error and len(error.strip().splitlines()) == 1
    monkeypatch.undo()

    import shutil

    shutil.rmtree(out / "checkpoints")
    assert main(["run", "--out", str(out), "--resume", "--quiet"]) == 0
    assert metrics_without_timing(out) == metrics_without_timing(run_dir)


def test_ctrl_c_while_sampling_keeps_nothing_and_puts_a_replaced_run_back(run_dir, tmp_path, monkeypatch, capsys):
    import shutil

    from dpo_edu import run as run_module

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "sample_pairs", ctrl_c)
    assert main(["run", "--profile", "smoke", "--out", str(tmp_path / "new"), "--quiet"]) == 130
    assert "nothing was kept" in capsys.readouterr().err and not (tmp_path / "new").exists()

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    assert main(["run", "--profile", "smoke", "--out", str(old), "--overwrite", "--quiet"]) == 130
    capsys.readouterr()
    assert (old / "summary.json").read_bytes() == (run_dir / "summary.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]  # no old.old left behind


def test_the_report_names_the_weights_it_used(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"]["weights"] in (run_dir / "report.md").read_text(encoding="utf-8")
