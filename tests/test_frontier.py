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


def test_the_smoke_frontier_writes_its_figure_table_and_rows(tmp_path):
    out = tmp_path / "frontier"
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rows = [json.loads(line) for line in (out / "frontier.jsonl").read_text().splitlines()]
    profile = get_profile("smoke")
    runs = 2 * 2 * len(profile.frontier_betas) * len(profile.frontier_seeds)
    assert summary["runs"] == runs and len(summary["final"]) == runs // len(profile.frontier_seeds)
    assert sum(row["step"] == 0 for row in rows) == runs and all(row["kl"] == 0 for row in rows if row["step"] == 0)
    assert {row["method"] for row in rows} == {"dpo", "odpo"} and {row["setting"] for row in rows} == {"all pairs", "small data"}
    assert (out / "frontier.png").stat().st_size > 10_000 and "![frontier](frontier.png)" in (out / "frontier.md").read_text()
    assert main(["frontier", "--profile", "smoke", "--out", str(out), "--quiet"]) == 2  # never overwritten
