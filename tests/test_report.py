"""The training figure and the report show both sides of the margin, not only the margin."""
from __future__ import annotations

import pytest

from dpo_edu.report import TRAINING_PANELS, implicit_rewards, plot_training


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
