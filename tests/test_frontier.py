"""`dpo-edu frontier` at smoke size on the real model, and the frontier's bookkeeping on made-up rows."""
import json

import pytest

from dpo_edu.cli import main
from dpo_edu.config import get_profile
from dpo_edu.frontier import final_table, odpo_minus_dpo, settings_of


def rows_for(seed, method, reward_shift, kl_shift):
    return [
        {"seed": seed, "setting": "all pairs", "method": method, "beta": beta, "step": step,
         "reward_mean": 0.1 * step + reward_shift, "kl": step / beta / 10 + kl_shift, "win_rate": 0.5 + 0.01 * step}
        for beta in (0.1, 0.5) for step in (0, 2, 4)
    ]


def test_final_table_and_odpo_minus_dpo():
    rows = rows_for(0, "dpo", 0.0, 0.0) + rows_for(0, "odpo", 0.05, -0.1) + rows_for(1, "dpo", 0.02, 0.0) + rows_for(1, "odpo", 0.03, 0.1)
    table = {(r["method"], r["beta"]): r for r in final_table(rows)}
    assert table[("dpo", 0.1)]["step"] == 4 and table[("dpo", 0.1)]["seeds"] == 2
    assert table[("dpo", 0.1)]["reward"] == pytest.approx(0.41) and table[("dpo", 0.1)]["reward_spread"] == pytest.approx(0.01)
    differences = {(d["seed"], d["setting"]): d for d in odpo_minus_dpo(rows)}
    assert differences[(0, "all pairs")]["reward"] == pytest.approx(0.05) and differences[(0, "all pairs")]["kl"] == pytest.approx(-0.1)
    assert differences[(1, "all pairs")]["reward"] == pytest.approx(0.01) and differences[(1, "all pairs")]["checkpoints"] == 4


def test_small_data_trains_for_as_many_steps():
    profile = get_profile("full")
    pairs = [{"i": i} for i in range(96)]
    settings = settings_of(pairs, profile)
    all_pairs, epochs = settings["all pairs"]
    small, small_epochs = settings["small data"]
    assert len(all_pairs) * epochs == len(small) * small_epochs == 96 and len(small) == profile.frontier_small_pairs


@pytest.fixture(scope="module")
def frontier_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier") / "whole"
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet"]) == 0
    return out


def read_rows(folder):
    return [json.loads(line) for line in (folder / "frontier.jsonl").read_text().splitlines()]


def test_the_smoke_frontier_writes_its_figure_table_and_rows(frontier_dir):
    out = frontier_dir
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out)
    profile = get_profile("smoke")
    runs = 2 * 2 * len(profile.frontier_betas) * len(profile.frontier_seeds)
    assert summary["runs"] == runs and len(summary["final"]) == runs // len(profile.frontier_seeds)
    assert sum(row["step"] == 0 for row in rows) == runs and all(row["kl"] == 0 for row in rows if row["step"] == 0)
    assert sum(bool(row.get("final")) for row in rows) == runs
    assert {row["method"] for row in rows} == {"dpo", "odpo"} and {row["setting"] for row in rows} == {"all pairs", "small data"}
    assert (out / "frontier.png").stat().st_size > 10_000 and "![frontier](frontier.png)" in (out / "frontier.md").read_text()
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet"]) == 2  # never overwritten


def test_ctrl_c_keeps_the_finished_runs_and_resume_does_the_rest(frontier_dir, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the third training run: the two finished runs stay in frontier.jsonl, no traceback, and --resume
    (with the sweep's own profile) ends with the rows of an uninterrupted sweep."""
    import os
    import signal

    from dpo_edu import frontier as frontier_module

    original, calls = frontier_module.train_dpo, []

    def ctrl_c_in_the_third_run(*args, on_step, **kwargs):
        calls.append(1)

        def on_step_then_ctrl_c(record):
            extra = on_step(record)
            if len(calls) == 3 and record["step"] == 1:
                os.kill(os.getpid(), signal.SIGINT)
            return extra

        return original(*args, on_step=on_step_then_ctrl_c, **kwargs)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(frontier_module, "train_dpo", ctrl_c_in_the_third_run)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet"]) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    error = capsys.readouterr()
    assert f"dpo-edu frontier --out {out} --resume" in error.err and "checkpoint" not in error.out + error.err
    assert sum(bool(row.get("final")) for row in read_rows(out)) == 2
    monkeypatch.setattr(frontier_module, "train_dpo", original)
    monkeypatch.setenv("DPO_EDU_PROFILE", "full")
    assert main(["frontier", "--out", str(out), "--resume", "--quiet"]) == 0

    def by_run(rows):
        return sorted(rows, key=lambda row: (row["seed"], row["setting"], row["method"], row["beta"], row["step"]))

    assert by_run(read_rows(out)) == by_run(read_rows(frontier_dir))
    def final(folder):
        table = json.loads((folder / "summary.json").read_text())["final"]
        return sorted(table, key=lambda row: (row["setting"], row["method"], row["beta"]))

    assert final(out) == final(frontier_dir)
