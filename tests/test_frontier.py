"""`dpo-edu frontier` at smoke size on the real model, and the frontier's bookkeeping on made-up rows."""
import dataclasses
import json
import math
import statistics

import pytest

from dpo_edu.cli import main
from dpo_edu.config import get_profile
from dpo_edu.frontier import check_methods, offset_stats, settings_of
from dpo_edu.frontier_report import (beta_orders_kl, curve_table, final_table, interpolate, kl_span, matched_kl, odpo_minus_dpo)
from dpo_edu.reward_model import spearman


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
    assert spearman([1, 2, 3], [1, 1, 1]) != spearman([1, 2, 3], [1, 1, 1])  # nan: no order to rank


def test_beta_orders_kl_reads_each_seeds_last_checkpoint():
    rows = rows_for(0, "dpo", 0.0, 0.0) + rows_for(1, "dpo", 0.0, 0.0)  # kl = step / beta / 10: the larger beta ends closer
    (row,) = beta_orders_kl(rows)
    assert row["method"] == "dpo" and row["per_seed"] == {0: -1.0, 1: -1.0} and row["mean"] == -1.0


def curve(seed, method, kls, prompt_rewards, beta=None):
    """One run's rows: checkpoint i at KL kls[i] with per-prompt rewards prompt_rewards[i]."""
    return [{"seed": seed, "setting": "all pairs", "method": method, "beta": beta, "step": 2 * i, "kl": kl,
             "rewards": list(rewards), "reward_mean": statistics.fmean(rewards), "reward_gain": 0.0,
             "reward_gain_se": 0.0, "win_rate": 0.5} for i, (kl, rewards) in enumerate(zip(kls, prompt_rewards))]


def test_interpolate_reads_a_curve_between_its_checkpoints_and_never_beyond():
    points = curve(0, "dpo", (0.0, 1.0, 3.0), ((0.0, 0.0), (0.2, 0.4), (0.6, 0.4)))
    assert interpolate(points, 0.5) == pytest.approx([0.1, 0.2])
    assert interpolate(points, 2.0) == pytest.approx([0.4, 0.4])
    assert interpolate(points, 3.0) == pytest.approx([0.6, 0.4])
    assert interpolate(points, 3.5) is None  # no extrapolation


def test_matched_kl_pairs_prompts_and_seeds_and_separates_only_beyond_two_standard_errors():
    kls = (0.0, 1.0, 2.0)
    rows = []
    for seed, shift in ((0, 0.10), (1, 0.12)):
        rows += curve(seed, "rloo-gold", kls, ((0.0, 0.0, 0.0), (0.3, 0.5, 0.4), (0.6, 0.7, 0.8)), beta=0.05)
        rows += curve(seed, "dpo", kls, ((0.0, 0.0, 0.0), (0.3 - shift, 0.5 - shift, 0.4 - shift - 0.01),
                                         (0.6, 0.7, 0.8)), beta=0.1)
    (point,) = matched_kl(rows, ("all pairs", "rloo-gold", 0.05), ("all pairs", "dpo", 0.1), (1.0,))
    differences = [0.10, 0.10, 0.11, 0.12, 0.12, 0.13]
    assert point["difference"] == pytest.approx(statistics.fmean(differences)) and point["n"] == 6
    assert point["se"] == pytest.approx(statistics.stdev(differences) / math.sqrt(6))
    assert point["per_seed"] == pytest.approx({0: 0.31 / 3, 1: 0.37 / 3}) and point["separated"]
    (same,) = matched_kl(rows, ("all pairs", "rloo-gold", 0.05), ("all pairs", "dpo", 0.1), (2.0,))
    assert same["difference"] == pytest.approx(0.0) and not same["separated"]
    assert matched_kl(rows, ("all pairs", "rloo-gold", 0.05), ("all pairs", "dpo", 0.1), (2.5,)) == []  # beyond a curve


def test_seeds_that_disagree_are_not_separated_however_small_the_standard_error():
    kls = (0.0, 1.0)
    rows = (curve(0, "sft", kls, ((0.0,) * 4, (0.5,) * 4)) + curve(0, "bon-gold", kls, ((0.0,) * 4, (0.3,) * 4))
            + curve(1, "sft", kls, ((0.0,) * 4, (0.3,) * 4)) + curve(1, "bon-gold", kls, ((0.0,) * 4, (0.31,) * 4)))
    (point,) = matched_kl(rows, ("all pairs", "sft", None), ("all pairs", "bon-gold", None), (1.0,))
    assert point["difference"] > 2 * point["se"] and point["per_seed"][1] < 0 and not point["separated"]


def test_kl_span_is_over_the_checkpoints_not_the_reference():
    rows = curve(0, "dpo", (0.0, 0.5, 4.0), ((0.0,), (0.1,), (0.2,)), beta=0.1)
    assert kl_span(rows) == {"min": 0.5, "max": 4.0, "ratio": 8.0}


def test_methods_are_checked_in_one_line():
    assert check_methods("rloo,dpo") == ("dpo", "rloo") and check_methods(["bon", "sft"]) == ("sft", "bon")
    with pytest.raises(ValueError, match=r"^unknown method 'ppo'; choose from dpo, odpo, sft, rloo, rloo-gold, bon, bon-gold"):
        check_methods("dpo,ppo")
    with pytest.raises(ValueError, match="no method given"):
        check_methods(" , ")


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


ALL = ["--methods", "dpo,odpo,sft,rloo,rloo-gold,bon,bon-gold"]
TIMES = ("seconds_train",)  # the only fields of a row that differ between two runs of the same sweep


@pytest.fixture(scope="module")
def frontier_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier") / "whole"
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet", *ALL, *FP32]) == 0
    return out


def read_rows(folder):
    return [json.loads(line) for line in (folder / "frontier.jsonl").read_text().splitlines()]


def test_the_smoke_frontier_writes_a_curve_for_every_method_and_its_tables(frontier_dir):
    out = frontier_dir
    summary = json.loads((out / "summary.json").read_text())
    rows = read_rows(out)
    profile = get_profile("smoke")
    betas, seeds = len(profile.frontier_betas), len(profile.frontier_seeds)
    runs = (2 * betas + 5) * seeds
    assert summary["runs"] == runs and sum(bool(row.get("final")) for row in rows) == runs
    assert {row["method"] for row in rows} == {"dpo", "odpo", "sft", "rloo", "rloo-gold", "bon", "bon-gold"}
    assert sum(row["step"] == 0 for row in rows) == runs and all(row["kl"] == 0 for row in rows if row["step"] == 0)
    assert all(len(row["rewards"]) == profile.frontier_heldout_prompts for row in rows)
    for row in rows:  # every point is also its gain over the seed's reference, prompt by prompt
        reference = next(r for r in rows if _same_run(r, row) and r["step"] == 0)
        gains = [a - b for a, b in zip(row["rewards"], reference["rewards"])]
        assert row["reward_gain"] == pytest.approx(statistics.fmean(gains))
    trained = [row for row in rows if row["method"] in ("dpo", "sft", "rloo") and row["step"] > 0]
    assert {row["step"] for row in trained} >= {1, 2}  # a curve: the checkpoint and the last step
    bon = [row for row in rows if row["method"] == "bon" and row["step"] > 0]
    assert [row["n"] for row in bon] == list(profile.frontier_bon_ns)
    assert [row["kl"] for row in bon] == pytest.approx([math.log(n) - (n - 1) / n for n in profile.frontier_bon_ns])
    rloo = [row for row in rows if row["method"] == "rloo-gold" and row.get("final")]
    assert all(row["samples_drawn"] == row["step"] * profile.frontier_rloo_prompts_per_step * profile.frontier_rloo_k
               for row in rloo)
    dpo_final = [row for row in rows if row["method"] == "dpo" and row.get("final")]
    assert all(set(row["implicit"]) >= {"accuracy", "chosen", "rejected", "spearman_within"} for row in dpo_final)
    (reward_model,) = summary["reward_models"]
    assert reward_model["heldout_pairs"] > 0 and 0 <= reward_model["heldout"]["accuracy"] <= 1
    assert [row["method"] for row in summary["costs"]][:3] == ["dpo", "dpo", "odpo"]
    assert {row["method"] for row in summary["beta_orders_kl"]} == {"dpo", "odpo"}
    assert [c["b"][1] for c in summary["matched_kl"]] == ["dpo", "odpo", "odpo", "sft", "rloo", "rloo-gold", "bon",
                                                         "bon-gold"]
    assert set(summary["offsets"]) == {str(seed) for seed in profile.frontier_seeds}
    assert (out / "frontier.png").stat().st_size > 10_000 and "![frontier](frontier.png)" in (out / "frontier.md").read_text()
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet"]) == 2  # never overwritten


def _same_run(a, b):
    return all(a[key] == b[key] for key in ("seed", "setting", "method", "beta"))


def without_times(rows):
    return sorted(({k: v for k, v in row.items() if k not in TIMES} for row in rows),
                  key=lambda row: (row["seed"], row["setting"], row["method"], row["beta"] or 0, row["step"]))


def test_ctrl_c_keeps_the_finished_runs_and_resume_does_the_rest(frontier_dir, tmp_path, monkeypatch, capsys, ctrl_c):
    """Ctrl-C in the second DPO run: the finished run stays in frontier.jsonl, no traceback, and --resume
    (with the sweep's own profile and methods) ends with the rows an uninterrupted sweep made for those methods."""
    from dpo_edu import frontier as frontier_module

    out = tmp_path / "interrupted"
    put_back = ctrl_c(frontier_module, run=2, step=1)
    methods = ("dpo", "rloo-gold")
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet", "--methods", ",".join(methods),
                 *FP32]) == 130
    error = capsys.readouterr()
    assert f"dpo-edu frontier --out {out} --resume" in error.err and "checkpoint" not in error.out + error.err
    assert sum(bool(row.get("final")) for row in read_rows(out)) == 1
    put_back()
    assert main(["frontier", "--out", str(out), "--resume", "--methods", "dpo"]) == 2  # not the sweep's methods
    assert "was started with --methods dpo,rloo-gold; resume it without --methods" in capsys.readouterr().err
    monkeypatch.setenv("DPO_EDU_PROFILE", "full")
    assert main(["frontier", "--out", str(out), "--resume", "--quiet"]) == 0
    expected = [row for row in read_rows(frontier_dir) if row["method"] in methods]
    assert without_times(read_rows(out)) == without_times(expected)

    def final(folder):
        table = json.loads((folder / "summary.json").read_text())["final"]
        return sorted((row for row in table if row["method"] in methods),
                      key=lambda row: (row["setting"], row["method"], row["beta"] or 0))

    assert final(out) == final(frontier_dir)


@pytest.mark.parametrize("change, message", [
    ({"frontier_rloo_k": 1}, "k must be >= 2"),
    ({"frontier_bon_ns": (0, 4)}, "N"),
    ({"frontier_rloo_learning_rate": -1.0}, "learning_rate"),
])
def test_bad_settings_fail_in_one_line_before_the_model_loads(change, message, tmp_path, monkeypatch):
    from dpo_edu import frontier as frontier_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    from dpo_edu import stages

    monkeypatch.setattr(stages, "load_model", no_model)  # stage 0 loads the reference
    monkeypatch.setattr(frontier_module, "load_model", no_model)
    profile = dataclasses.replace(get_profile("smoke"), **change)
    with pytest.raises(ValueError, match=message) as error:
        frontier_module.frontier(profile, tmp_path / "bad", methods="rloo,bon", log=None)
    assert "\n" not in str(error.value) and not (tmp_path / "bad").exists()


def test_an_unknown_method_is_one_line_on_the_command_line_and_makes_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--methods", "dpo,ppo"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("dpo-edu frontier: unknown method 'ppo'; choose from") and "\n" not in error
    assert not out.exists()


@pytest.mark.parametrize("betas", ["0.1,-1", "0.1,x", ","])
def test_bad_betas_are_one_line_on_the_command_line(betas, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frontier", "--profile", "smoke", "--out", str(tmp_path / "never"), "--betas", betas])
    assert exit_.value.code == 2 and "--betas" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_eval_steps_reach_the_sweep_from_the_command_line(tmp_path, monkeypatch):
    """`--eval-steps 4,24` is notebook 07's sweep from a terminal (docs/frontier/odpo/README.md gives the command)."""
    from dpo_edu import frontier as frontier_module

    seen = {}
    monkeypatch.setattr(frontier_module, "frontier", lambda *args, **kwargs: seen.update(kwargs))
    assert main(["frontier", "--profile", "smoke", "--out", str(tmp_path / "f"), "--eval-steps", "4,24"]) == 0
    assert seen["eval_steps"] == [4, 24]
    assert main(["frontier", "--profile", "smoke", "--out", str(tmp_path / "g")]) == 0
    assert seen["eval_steps"] is None  # the profile's


@pytest.mark.parametrize("steps", ["8,0", "8,x", ",", "2.5"])
def test_bad_eval_steps_are_one_line_on_the_command_line(steps, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frontier", "--profile", "smoke", "--out", str(tmp_path / "never"), "--eval-steps", steps])
    assert exit_.value.code == 2 and "--eval-steps" in capsys.readouterr().err and not (tmp_path / "never").exists()


def test_the_last_checkpoints_of_seeds_with_different_run_lengths_are_pooled_together():
    """Seed 0 has 47 steps and seed 1 48 (its pairs differ in number): both last checkpoints make one point."""
    rows = (curve(0, "dpo", (0.0, 1.0, 2.0), ((0.0,), (0.1,), (0.3,)), beta=0.1)
            + curve(1, "dpo", (0.0, 1.2, 2.4), ((0.0,), (0.2,), (0.5,)), beta=0.1))
    rows[2]["step"], rows[5]["step"] = 47, 48
    for row in rows:
        row["reward_gain"], row["reward_gain_se"] = row["rewards"][0], 0.01
    table = curve_table(rows)
    assert [row["step"] for row in table] == [0, 2, 48]
    assert table[-1]["kl"] == pytest.approx(2.2) and table[-1]["gain"] == pytest.approx(0.4)
    assert table[-1]["gain_se"] == pytest.approx(math.sqrt(2) * 0.01 / 2) and table[-1]["kl_spread"] == pytest.approx(0.2)


def test_frontier_md_names_only_the_methods_the_sweep_ran():
    """Notebook 07's DPO/ODPO sweep once printed "RLOO beta 0.05; best-of-N for N in [1, 2, 4, 8, 16]" and the
    best-of-N KL bound in its frontier.md, though it ran neither."""
    from pathlib import Path

    from dpo_edu.frontier_report import markdown_table

    docs = Path(__file__).resolve().parents[1] / "docs" / "frontier"
    odpo = markdown_table(json.loads((docs / "odpo" / "summary.json").read_text(encoding="utf-8")))
    header = odpo.split("## ", 1)[0]
    assert "DPO/ODPO betas [0.05, 5.0]" in header and "RLOO" not in header and "best-of-N" not in header.lower()
    everything = markdown_table(json.loads((docs / "summary.json").read_text(encoding="utf-8")))
    header = everything.split("## ", 1)[0]
    assert "RLOO beta 0.05" in header and "best-of-N for N in [1, 2, 4, 8, 16]" in header and "upper bound" in header
