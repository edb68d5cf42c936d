"""Figures and the markdown report of a full run (`dpo_edu.run`).

Figures are built on `matplotlib.figure.Figure`, which needs no GUI backend:
the CLI saves them as PNG, a notebook displays them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from .precision import describe

# One panel per tuple: the metrics.jsonl keys it draws, and its title. The implicit rewards of the chosen and of the
# rejected responses share a panel: the margin can grow while both fall (likelihood displacement, notebooks 03 and 06).
TRAINING_PANELS = (
    (("loss",), "DPO loss"),
    (("rewards/margins",), "reward margin (chosen - rejected)"),
    (("rewards/chosen", "rewards/rejected"), "implicit rewards beta * log(pi / pi_ref)"),
    (("rewards/accuracies",), "reward accuracy"),
)


def plot_training(history: Sequence[dict]) -> Figure:
    """One panel per `TRAINING_PANELS` entry against the optimizer step (the metrics.jsonl rows)."""
    figure = Figure(figsize=(15, 3.4), layout="constrained")
    steps = [row["step"] for row in history]
    for axis, (keys, title) in zip(figure.subplots(1, len(TRAINING_PANELS)), TRAINING_PANELS):
        for key in keys:
            axis.plot(
                steps, [row[key] for row in history], marker=".", linewidth=1, label=key if len(keys) > 1 else None
            )
        if len(keys) > 1:
            axis.axhline(0, color="grey", linewidth=0.8)
            axis.legend()
        axis.set(title=title, xlabel="optimizer step")
        axis.grid(alpha=0.3)
    return figure


def plot_evaluation(evaluations: Sequence[dict], reward_name: str = "VADER") -> Figure:
    """Held-out mean reward (+- 1 SE) and the sequence KL(policy || reference) (+- 1 SE) at each evaluation."""
    figure = Figure(figsize=(9, 3.4), layout="constrained")
    steps = [row["step"] for row in evaluations]
    titles = (f"held-out mean reward ({reward_name})", "KL(policy || reference), nats")
    for axis, key, title in zip(figure.subplots(1, 2), ("reward", "kl"), titles):
        mean_key = "reward_mean" if key == "reward" else "kl"
        axis.errorbar(
            steps,
            [row[mean_key] for row in evaluations],
            yerr=[row[f"{key}_se"] for row in evaluations],
            marker="o",
            capsize=3,
        )
        axis.set(title=title, xlabel="optimizer step")
        axis.grid(alpha=0.3)
    return figure


def plot_pair_evaluation(evaluations: Sequence[dict]) -> Figure:
    """On held-out pairs (`dpo-edu run --pairs`): implicit-reward accuracy; the chosen and rejected implicit rewards
    and their margin (+- 1 SE); the KL(policy || reference) on their prompts (+- 1 SE)."""
    figure = Figure(figsize=(13, 3.4), layout="constrained")
    steps = [row["step"] for row in evaluations]
    accuracy, rewards, kl = figure.subplots(1, 3)
    accuracy.plot(steps, [row["accuracy"] for row in evaluations], marker="o")
    accuracy.set(title="held-out accuracy (chosen reward > rejected)", xlabel="optimizer step", ylim=(-0.05, 1.05))
    for key, label in (("chosen_reward", "chosen"), ("rejected_reward", "rejected")):
        rewards.plot(steps, [row[key] for row in evaluations], marker=".", label=label)
    rewards.errorbar(
        steps,
        [row["margin"] for row in evaluations],
        yerr=[row["margin_se"] for row in evaluations],
        marker="o",
        capsize=3,
        label="margin",
    )
    rewards.axhline(0, color="grey", linewidth=0.8)
    rewards.legend()
    rewards.set(title="held-out implicit rewards beta * log(pi / pi_ref)", xlabel="optimizer step")
    kl.errorbar(
        steps, [row["kl"] for row in evaluations], yerr=[row["kl_se"] for row in evaluations], marker="o", capsize=3
    )
    kl.set(title="KL(policy || reference) on their prompts, nats", xlabel="optimizer step")
    for axis in (accuracy, rewards, kl):
        axis.grid(alpha=0.3)
    return figure


def plot_reward_histograms(before: Sequence[float], after: Sequence[float], reward_name: str = "VADER") -> Figure:
    """Histograms of held-out rewards: the reference's samples and the trained policy's (VADER's range [-1, 1] in tenths)."""
    figure = Figure(figsize=(6, 3.4), layout="constrained")
    axis = figure.subplots()
    low, high = min(*before, *after, -1.0), max(*before, *after, 1.0)
    bins = [low + (high - low) * i / 20 for i in range(21)]
    axis.hist(before, bins=bins, alpha=0.6, label="reference (before)")
    axis.hist(after, bins=bins, alpha=0.6, label="policy (after)")
    axis.set(
        title="held-out rewards",
        xlabel="VADER compound score" if reward_name == "VADER" else f"reward ({reward_name})",
        ylabel="samples",
    )
    axis.legend()
    return figure


def save_figures(figures: dict[str, Figure], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, figure in figures.items():
        paths[name] = folder / f"{name}.png"
        figure.savefig(paths[name], dpi=110)
    return paths


def with_se(value: float, se: float, unit: str, spec: str = ".3f") -> str:
    """'0.412 ± 0.031', or '0.412 (1 prompt: no SE)' when the SE is undefined (`mean_and_se` of one value: nan)."""
    return f"{value:{spec}} ± {se:{spec.lstrip('+')}}" if math.isfinite(se) else f"{value:{spec}} (1 {unit}: no SE)"


def _in_ses(value: float, se: float) -> str:
    """' (2.1 SE)': how many standard errors from 0; nothing when the SE is 0 (every pair tied) or undefined."""
    return f" ({value / se:.1f} SE)" if math.isfinite(se) and se > 0 else ""


def _quote(text: str, limit: int = 220) -> str:
    text = " ".join(text.split())
    return (text[:limit] + "…" if len(text) > limit else text).replace("|", "\\|")


def markdown_report(summary: dict, plot_paths: dict[str, Path], examples: Sequence[dict]) -> str:
    """report.md: the results table, the plots and sample generations before and after."""
    ref, final = summary["reference"], summary["final"]
    lines = [
        f"# DPO run on {summary['device']} ({summary['profile']} profile)",
        "",
        f"Weights: {summary['model']['weights']}. Arithmetic: {describe(summary.get('precision', 'fp32'))}.",
        "",
        f"Finished in {summary['seconds']['total']:.0f} s: pairs {summary['seconds']['pairs']:.0f} s, "
        f"training {summary['seconds']['train']:.0f} s (with evaluation {summary['seconds']['evaluation']:.0f} s), "
        f"{summary['pairs']['pairs']} pairs from {summary['pairs']['prompts']} prompts, {summary['steps']} optimizer steps; "
        f"peak memory {summary['peak_memory_mb']:,.0f} MB.",
        "",
        f"## Held-out results ({summary['heldout_prompts']} prompts, one sample each; reward: {summary.get('inputs', {}).get('reward', 'VADER')})",
        "",
        "| | reference | DPO policy |",
        "|---|---|---|",
        f"| mean reward ± SE | {with_se(ref['reward_mean'], ref['reward_se'], 'prompt')} "
        f"| {with_se(final['reward_mean'], final['reward_se'], 'prompt')} |",
        f"| reward gain ± SE (paired) | | {with_se(final['reward_gain'], final['reward_gain_se'], 'prompt', '+.3f')}"
        f"{_in_ses(final['reward_gain'], final['reward_gain_se'])} |",
        f"| win rate against the reference | 50 % | {100 * final['win_rate']:.1f} % |",
        f"| KL(policy ‖ reference) ± SE, nats (a Monte-Carlo estimate: can dip below 0) | 0 "
        f"| {with_se(final['kl'], final['kl_se'], 'prompt', '.2f')} |",
        "",
        f"Step-1 loss {summary['step0_loss']:.4f} (ln 2 = 0.6931) and margin {summary['step0_margin']:.4f}: the policy started as the reference.",
        "",
    ]
    if "implicit_rewards" in summary:
        moved = summary["implicit_rewards"]
        beta = summary["train_config"]["beta"]
        lines += [
            f"Implicit rewards over the last {moved['last_steps']} steps: chosen {moved['chosen_last']:+.3f}, rejected "
            f"{moved['rejected_last']:+.3f} (log-prob change {moved['chosen_last'] / beta:+.1f} and {moved['rejected_last'] / beta:+.1f} nats); "
            f"the chosen reward was negative at {moved['steps_chosen_negative']} of {moved['steps']} steps.",
            "",
        ]
    lines += ["## Plots", ""]
    lines += [f"![{name}](plots/{path.name})" for name, path in plot_paths.items()]
    lines += [
        "",
        "## Samples before and after (held-out prompts)",
        "",
        "| prompt | reference | DPO policy |",
        "|---|---|---|",
    ]
    for example in examples:
        lines.append(
            f"| {_quote(example['prompt'], 90)} | ({example['before_reward']:+.2f}) {_quote(example['before'])} "
            f"| ({example['after_reward']:+.2f}) {_quote(example['after'])} |"
        )
    return "\n".join(lines) + "\n"


def markdown_pairs_report(summary: dict, plot_paths: dict[str, Path], examples: Sequence[dict]) -> str:
    """report.md of `dpo-edu run --pairs`: held-out pairs' implicit rewards and the KL, the plots, five policy samples."""
    counts = summary["pairs"]
    lines = [
        f"# DPO on {counts['source']} on {summary['device']} ({summary['profile']} profile)",
        "",
        f"Weights: {summary['model']['weights']}. Arithmetic: {describe(summary.get('precision', 'fp32'))}.",
        "",
        f"Finished in {summary['seconds']['total']:.0f} s (training {summary['seconds']['train']:.0f} s, with evaluation "
        f"{summary['seconds']['evaluation']:.0f} s): {counts['pairs']} training pairs, {counts['heldout_pairs']} held out by prompt, "
        f"{summary['steps']} optimizer steps; peak memory {summary['peak_memory_mb']:,.0f} MB.",
        "",
        f"Step-1 loss {summary['step0_loss']:.4f} (ln 2 = 0.6931) and margin {summary['step0_margin']:.4f}: the policy started as the reference.",
        "",
    ]
    if "final" in summary:
        final = summary["final"]
        lines += [
            f"## Held-out pairs ({summary['heldout_pairs']} pairs, {summary['heldout_prompts']} prompts)",
            "",
            "Implicit reward of a reply: beta * (log pi(y|x) - log pi_ref(y|x)); both are 0 for the reference.",
            "",
            "| | DPO policy |",
            "|---|---|",
            f"| accuracy (chosen reward > rejected reward) | {100 * final['accuracy']:.1f} % |",
            f"| margin ± SE | {with_se(final['margin'], final['margin_se'], 'pair', '+.3f')} |",
            f"| chosen reward / rejected reward | {final['chosen_reward']:+.3f} / {final['rejected_reward']:+.3f} |",
            f"| KL(policy ‖ reference) ± SE on their prompts, nats "
            f"| {with_se(final['kl'], final['kl_se'], 'prompt', '.2f')} |",
            "",
        ]
    else:
        lines += ["No pairs were held out (--heldout-fraction 0): the run reports its training metrics only.", ""]
    lines += ["## Plots", ""] + [f"![{name}](plots/{path.name})" for name, path in plot_paths.items()]
    if examples:
        lines += ["", "## The policy's samples on held-out prompts", "", "| prompt | DPO policy |", "|---|---|"]
        lines += [f"| {_quote(example['prompt'], 90)} | {_quote(example['after'])} |" for example in examples]
    return "\n".join(lines) + "\n"
