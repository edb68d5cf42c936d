"""`dpo-edu frontier` at smoke size on the real model, and the frontier's bookkeeping on made-up rows."""
import dataclasses
import json
import math
import statistics

import pytest

from dpo_edu.cli import main
from dpo_edu.config import get_profile
from dpo_edu.frontier import (beta_orders_kl, final_table, odpo_minus_dpo, offset_stats, pareto_envelope, ranks, settings_of,
                              spearman)


def rows_for(seed, method, reward_shift, kl_shift, prompt_rewards=(0.0, 0.0, 0.0)):
    rows = [
        {"seed": seed, "setting": "all pairs", "method": method, "beta": beta, "step": step,
         "reward_mean": 0.1 * step + reward_shift, "kl": step / beta / 10 + kl_shift, "win_rate": 0.5 + 0.01 * step}
        for beta in (0.1, 0.5) for step in (0, 2, 4)
    ]
    for row in rows:
        if row["step"] == 4:
            row.update(final=True, rewards=[reward + reward_shift for reward in prompt_rewards])
    return rows


def test_final_table_and_odpo_minus_dpo_paired_over_prompts():
    rows = (rows_for(0, "dpo", 0.0, 0.0, (0.1, 0.2, 0.3)) + rows_for(0, "odpo", 0.05, -0.1, (0.1, 0.2, 0.3))
            + rows_for(1, "dpo", 0.02, 0.0, (0.5, 0.0, 0.1)) + rows_for(1, "odpo", 0.03, 0.1, (0.5, 0.0, 0.1)))
    table = {(r["method"], r["beta"]): r for r in final_table(rows)}
    assert table[("dpo", 0.1)]["step"] == 4 and table[("dpo", 0.1)]["seeds"] == 2
    assert table[("dpo", 0.1)]["reward"] == pytest.approx(0.41) and table[("dpo", 0.1)]["reward_spread"] == pytest.approx(0.01)
    (difference,) = odpo_minus_dpo(rows)
    # every prompt: ODPO - DPO is +0.05 (seed 0) and +0.01 (seed 1), at both betas: mean +0.03 and no spread over prompts
    assert difference["runs"] == 4 and difference["prompts"] == 3
    assert difference["reward"] == pytest.approx(0.03) and difference["ci95"] == pytest.approx(0.0, abs=1e-12)
    by_beta = {row["beta"]: row for row in difference["by_beta"]}
    assert by_beta[0.1]["reward"] == pytest.approx(0.03) and by_beta[0.5]["kl"] == pytest.approx(0.0)


def test_odpo_minus_dpo_interval_is_1_96_standard_errors_over_prompts():
    rows = rows_for(0, "dpo", 0.0, 0.0, (0.0, 0.0, 0.0, 0.0)) + rows_for(0, "odpo", 0.0, 0.0, (0.0, 0.0, 0.0, 0.0))
    for row in rows:
        if row["method"] == "odpo" and row.get("final"):
            row["rewards"] = [0.1, -0.1, 0.3, 0.1]
    (difference,) = odpo_minus_dpo(rows)
    assert difference["reward"] == pytest.approx(0.1)
    assert difference["ci95"] == pytest.approx(1.96 * statistics.stdev([0.1, -0.1, 0.3, 0.1]) / 2)


def test_spearman_ranks_and_ties():
    assert spearman([0.05, 0.2, 1.0, 5.0], [3.0, 2.0, 1.0, 0.5]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert ranks([2.0, 1.0, 2.0]) == [2.5, 1.0, 2.5]
    assert spearman([1, 2, 3], [1, 1, 1]) != spearman([1, 2, 3], [1, 1, 1])  # nan: no order to rank


def test_beta_orders_kl_reads_each_seeds_last_checkpoint():
    rows = rows_for(0, "dpo", 0.0, 0.0) + rows_for(1, "dpo", 0.0, 0.0)  # kl = step / beta / 10: the larger beta ends closer
    (row,) = beta_orders_kl(rows)
    assert row["method"] == "dpo" and row["per_seed"] == {0: -1.0, 1: -1.0} and row["mean"] == -1.0


def test_pareto_envelope_keeps_only_undominated_points():
    points = [(1.0, 0.2), (0.5, 0.1), (2.0, 0.15), (3.0, 0.4), (0.5, 0.05), (0.0, 0.0)]
    assert pareto_envelope(points) == [(0.0, 0.0), (0.5, 0.1), (1.0, 0.2), (3.0, 0.4)]


def test_offsets_with_the_score_scale_are_never_negative_on_pairs_the_run_keeps():
    profile = get_profile("full")
    pairs = [{"chosen_score": 0.1 * i, "rejected_score": 0.0} for i in range(1, 21)]  # gaps 0.1 .. 2.0 (run_min_gap = 0.1)
    stats = offset_stats(pairs, 1.0, profile.frontier_odpo_score_scale)
    assert stats["negative"] == 0 and stats["min"] == pytest.approx(0.0, abs=1e-6) and stats["max"] == pytest.approx(math.log(20))
    assert offset_stats(pairs, 1.0, 1.0)["negative"] == pytest.approx(0.45)  # scale 1: gaps below 1 relax DPO


def test_small_data_trains_for_as_many_steps():
    profile = dataclasses.replace(get_profile("full"), frontier_small_pairs=24)
    pairs = [{"i": i} for i in range(96)]
    settings = settings_of(pairs, profile)
    all_pairs, epochs = settings["all pairs"]
    small, small_epochs = settings["small data"]
    assert len(all_pairs) * epochs == len(small) * small_epochs == 96 and len(small) == 24
    assert list(settings_of(pairs, get_profile("full"))) == ["all pairs"]  # the course's sweep: the main setting only


# float32 on every machine: the sweep's bookkeeping is tested here, the same way on a CPU with bf16 and one without
# (the bf16 path has its own tests); --resume keeps the sweep's own precision
FP32 = ["--precision", "fp32"]


@pytest.fixture(scope="module")
def frontier_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier") / "whole"
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet", *FP32]) == 0
    return out


def read_rows(folder):
    return [json.loads(line) for line in (folder / "frontier.jsonl").read_text().splitlines()]


def test_the_smoke_frontier_writes_its_figure_table_and_rows(frontier_dir):
    out = frontier_dir
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out)
    profile = get_profile("smoke")
    runs = 2 * len(profile.frontier_betas) * len(profile.frontier_seeds)
    assert summary["runs"] == runs and len(summary["final"]) == runs // len(profile.frontier_seeds)
    assert sum(row["step"] == 0 for row in rows) == runs and all(row["kl"] == 0 for row in rows if row["step"] == 0)
    assert sum(bool(row.get("final")) for row in rows) == runs
    assert {row["method"] for row in rows} == {"dpo", "odpo"} and {row["setting"] for row in rows} == {"all pairs"}
    finals = [row for row in rows if row.get("final")]
    assert all(len(row["rewards"]) == profile.frontier_heldout_prompts for row in finals)
    assert all(math.isfinite(row["rewards/chosen"]) and math.isfinite(row["rewards/rejected"]) for row in rows if row["step"] > 0)
    (difference,) = summary["odpo_minus_dpo"]
    assert difference["runs"] == runs // 2 and difference["prompts"] == profile.frontier_heldout_prompts
    assert [row["method"] for row in summary["beta_orders_kl"]] == ["dpo", "odpo"]
    assert set(summary["offsets"]) == {str(seed) for seed in profile.frontier_seeds}
    assert (out / "frontier.png").stat().st_size > 10_000 and "![frontier](frontier.png)" in (out / "frontier.md").read_text()
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet"]) == 2  # never overwritten


def test_ctrl_c_keeps_the_finished_runs_and_resume_does_the_rest(frontier_dir, tmp_path, monkeypatch, capsys, ctrl_c):
    """Ctrl-C in the third training run: the two finished runs stay in frontier.jsonl, no traceback, and --resume
    (with the sweep's own profile) ends with the rows of an uninterrupted sweep."""
    from dpo_edu import frontier as frontier_module

    out = tmp_path / "interrupted"
    put_back = ctrl_c(frontier_module, run=3, step=1)
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet", *FP32]) == 130
    error = capsys.readouterr()
    assert f"dpo-edu frontier --out {out} --resume" in error.err and "checkpoint" not in error.out + error.err
    assert sum(bool(row.get("final")) for row in read_rows(out)) == 2
    put_back()
    monkeypatch.setenv("DPO_EDU_PROFILE", "full")
    assert main(["frontier", "--out", str(out), "--resume", "--quiet"]) == 0

    def by_run(rows):
        return sorted(rows, key=lambda row: (row["seed"], row["setting"], row["method"], row["beta"], row["step"]))

    assert by_run(read_rows(out)) == by_run(read_rows(frontier_dir))
    def final(folder):
        table = json.loads((folder / "summary.json").read_text())["final"]
        return sorted(table, key=lambda row: (row["setting"], row["method"], row["beta"]))

    assert final(out) == final(frontier_dir)
