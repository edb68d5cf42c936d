"""The training figure and the report show both sides of the margin, not only the margin."""
from __future__ import annotations

import math

import pytest

from dpo_edu.evaluate import implicit_rewards
from dpo_edu.report import TRAINING_PANELS, plot_training


def _history() -> list[dict]:
    # the margin grows while both implicit rewards fall: likelihood displacement
    return [{"step": step, "loss": 0.7 - 0.01 * step, "rewards/margins": 0.05 * step, "rewards/accuracies": 0.5,
             "rewards/chosen": -0.02 * step + 0.01, "rewards/rejected": -0.07 * step + 0.01} for step in range(1, 31)]


def test_training_figure_draws_chosen_and_rejected_rewards():
    keys = [key for panel_keys, _ in TRAINING_PANELS for key in panel_keys]
    assert "rewards/chosen" in keys and "rewards/rejected" in keys
    history = _history()
    figure = plot_training(history)
    lines = {line.get_label(): list(line.get_ydata()) for axis in figure.axes for line in axis.lines}
    assert lines["rewards/chosen"] == [row["rewards/chosen"] for row in history]
    assert lines["rewards/rejected"] == [row["rewards/rejected"] for row in history]


def test_implicit_rewards_reads_the_displacement():
    moved = implicit_rewards(_history(), last=20)
    assert moved["steps"] == 30 and moved["last_steps"] == 20
    assert moved["steps_chosen_negative"] == 30  # -0.02 * 1 + 0.01 < 0 already at step 1
    assert moved["chosen_last"] == pytest.approx(sum(-0.02 * s + 0.01 for s in range(11, 31)) / 20)
    assert moved["rejected_last"] < moved["chosen_last"] < 0


def _summary(final: dict, reference_se: float) -> dict:
    return {"device": "cpu", "profile": "smoke", "model": {"weights": "w"}, "precision": "fp32",
            "seconds": {"total": 1, "pairs": 0, "train": 1, "evaluation": 0}, "steps": 1, "peak_memory_mb": 1.0,
            "pairs": {"pairs": 1, "prompts": 1, "heldout_pairs": 1, "source": "p.jsonl"}, "heldout_prompts": 1,
            "heldout_pairs": 1, "inputs": {"reward": "r.py:reward"}, "step0_loss": 0.6931, "step0_margin": 0.0,
            "reference": {"reward_mean": 0.0, "reward_se": reference_se}, "final": final}


def test_a_reward_that_ties_everywhere_and_a_single_value_still_make_a_report():
    """A gain whose SE is 0 (every pair tied) once crashed the report (ZeroDivisionError); one value printed '± nan'."""
    from dpo_edu.report import markdown_pairs_report, markdown_report

    tied = {"reward_mean": 1.0, "reward_se": 0.0, "reward_gain": 0.0, "reward_gain_se": 0.0, "win_rate": 0.5, "kl": 0.1,
            "kl_se": 0.02}
    report = markdown_report(_summary(tied, 0.0), {}, [])
    assert "| +0.000 ± 0.000 |" in report and "SE) |" not in report
    single = {**tied, "reward_se": math.nan, "reward_gain_se": math.nan, "kl_se": math.nan}
    report = markdown_report(_summary(single, math.nan), {}, [])
    assert "nan" not in report and "| 0.000 (1 prompt: no SE) | 1.000 (1 prompt: no SE) |" in report
    pairs = {"accuracy": 1.0, "margin": 0.25, "margin_se": math.nan, "chosen_reward": 0.1, "rejected_reward": -0.15,
             "kl": 0.5, "kl_se": math.nan}
    report = markdown_pairs_report(_summary(pairs, math.nan), {}, [])
    assert "nan" not in report and "| margin ± SE | +0.250 (1 pair: no SE) |" in report


def test_with_se_keeps_the_format_of_its_value():
    from dpo_edu.report import with_se

    assert with_se(0.41234, 0.0312, "prompt") == "0.412 ± 0.031"
    assert with_se(0.5, 0.024, "prompt", ".2f") == "0.50 ± 0.02" and with_se(-0.5, 0.1, "pair", "+.3f") == "-0.500 ± 0.100"
    assert with_se(0.5, math.nan, "pair", "+.3f") == "+0.500 (1 pair: no SE)"
