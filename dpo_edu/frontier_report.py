"""Reading a frontier sweep's rows (frontier.jsonl): each run a curve, two curves at matched KL, the tables of
summary.json, the figure and frontier.md. Functions of the rows alone, no model: a notebook reads a committed sweep
(docs/frontier/) with them as well as one it has just run (`dpo_edu.frontier`).

    curves(rows)                  {(setting, method, beta): {seed: the run's rows by step}}
    matched_kl(rows, a, b, kls)   curve a's true reward minus curve b's at the same KL, paired over prompts and seeds
    curve_table, final_table, kl_span, beta_orders_kl, odpo_minus_dpo, costs, comparisons   summary.json's tables
    plot_frontier(rows), markdown_table(summary)                                            frontier.png, frontier.md
"""

from __future__ import annotations

import math
import statistics

from matplotlib.figure import Figure

from .evaluate import mean_and_se
from .reward_model import spearman

# the methods, as the rows name them
METHODS = ("dpo", "odpo", "sft", "rloo", "rloo-gold", "bon", "bon-gold")
BETA_METHODS = ("dpo", "odpo")  # one run per beta of the sweep
COLORS = {
    "dpo": "tab:blue",
    "odpo": "tab:orange",
    "sft": "tab:gray",
    "rloo": "tab:red",
    "rloo-gold": "tab:purple",
    "bon": "tab:green",
    "bon-gold": "tab:olive",
}
LABELS = {
    "dpo": "DPO",
    "odpo": "ODPO",
    "sft": "Preferred-FT",
    "rloo": "RLOO (reward model)",
    "rloo-gold": "RLOO (true reward)",
    "bon": "best-of-N (reward model)",
    "bon-gold": "best-of-N (true reward)",
}

# What each method holds while it trains (or answers), besides the model it trains: DPO needs only the reference's
# log-probs of its pairs, computed once before training; RLOO samples, so it keeps the reference model (the KL
# penalty) and the reward model it is scored by; best-of-N trains nothing but scores N answers per prompt.
MODELS_HELD = {
    "dpo": "policy",
    "odpo": "policy",
    "sft": "policy",
    "rloo": "policy, reference, reward model",
    "rloo-gold": "policy, reference",
    "bon": "reference, reward model",
    "bon-gold": "reference",
}


def run_of(row: dict) -> tuple:
    """The run a row belongs to: (seed, setting, method, beta)."""
    return row["seed"], row["setting"], row["method"], row["beta"]


def label(method: str, beta) -> str:
    return LABELS[method] + (f" beta={beta:g}" if method in BETA_METHODS else "")


def curves(rows: list[dict]) -> dict[tuple, dict[int, list[dict]]]:
    """{(setting, method, beta): {seed: that run's rows by step (the reference's point first)}}."""
    out: dict[tuple, dict[int, list[dict]]] = {}
    for row in rows:
        out.setdefault((row["setting"], row["method"], row["beta"]), {}).setdefault(row["seed"], []).append(row)
    for by_seed in out.values():
        for seed_rows in by_seed.values():
            seed_rows.sort(key=lambda row: row["step"])
    return out


def interpolate(points: list[dict], kl: float) -> list[float] | None:
    """Each prompt's reward on the curve `points` (rows by step, each with "kl" and "rewards") at KL `kl`: linear
    between the first two consecutive checkpoints whose KLs bracket it; None outside the curve (no extrapolation)."""
    for left, right in zip(points, points[1:]):
        low, high = sorted((left["kl"], right["kl"]))
        if low <= kl <= high:
            weight = 0.0 if high == low else (kl - left["kl"]) / (right["kl"] - left["kl"])
            return [(1 - weight) * a + weight * b for a, b in zip(left["rewards"], right["rewards"])]
    return None


def matched_kl(rows: list[dict], curve_a: tuple, curve_b: tuple, kls) -> list[dict]:
    """Curve a's true reward minus curve b's at each KL of `kls` that both reach in every seed: per prompt and seed,
    each curve read off between its checkpoints (`interpolate`); the mean over (seed, prompt) with its standard
    error, each seed's own mean, and "separated": |mean| > 2 SE and every seed on the mean's side.
    Curves are (setting, method, beta) keys of `curves`."""
    by_curve = curves(rows)
    a, b = by_curve.get(curve_a, {}), by_curve.get(curve_b, {})
    seeds = sorted(set(a) & set(b))
    out = []
    for kl in kls:
        differences, per_seed = [], {}
        for seed in seeds:
            ra, rb = interpolate(a[seed], kl), interpolate(b[seed], kl)
            if ra is None or rb is None:
                break
            seed_differences = [x - y for x, y in zip(ra, rb, strict=True)]
            per_seed[seed] = statistics.fmean(seed_differences)
            differences += seed_differences
        else:
            if not seeds:
                continue
            mean, se = mean_and_se(differences)
            same_side = all((value > 0) == (mean > 0) for value in per_seed.values())
            out.append(
                {
                    "kl": kl,
                    "difference": mean,
                    "se": se,
                    "n": len(differences),
                    "per_seed": per_seed,
                    "separated": bool(abs(mean) > 2 * se and same_side),
                }
            )
    return out


def pooled(rows_at_step: list[dict]) -> dict:
    """One checkpoint over seeds: mean KL and its half range; the mean over seeds of each seed's gain over its own
    reference, with the standard error of that mean (each seed's SE over prompts, combined)."""
    kls = [row["kl"] for row in rows_at_step]
    gain = statistics.fmean(row["reward_gain"] for row in rows_at_step)
    se = math.sqrt(sum(row["reward_gain_se"] ** 2 for row in rows_at_step)) / len(rows_at_step)
    return {
        "kl": statistics.fmean(kls),
        "kl_spread": (max(kls) - min(kls)) / 2,
        "gain": gain,
        "gain_se": se,
        "reward": statistics.fmean(row["reward_mean"] for row in rows_at_step),
        "seeds": len(rows_at_step),
    }


def curve_table(rows: list[dict]) -> list[dict]:
    """Every curve's checkpoints pooled over seeds (`pooled`), the i-th checkpoint of each seed together: seeds
    evaluate the same steps, but a run's last step depends on its number of pairs (47 and 48 steps, say), so
    "step" is the largest of the seeds' steps at that checkpoint. Checkpoints that not every seed reached are left
    out."""
    table = []
    for (setting, method, beta), by_seed in curves(rows).items():
        for index in range(min(len(seed_rows) for seed_rows in by_seed.values())):
            at_index = [seed_rows[index] for seed_rows in by_seed.values()]
            table.append(
                {
                    "setting": setting,
                    "method": method,
                    "beta": beta,
                    "step": max(row["step"] for row in at_index),
                    **pooled(at_index),
                }
            )
    return table


def kl_span(rows: list[dict]) -> dict:
    """The smallest and the largest KL of the non-reference checkpoints (seed means), and their ratio."""
    kls = [row["kl"] for row in curve_table(rows) if row["step"] > 0 and row["kl"] > 0]
    low, high = (min(kls), max(kls)) if kls else (math.nan, math.nan)
    return {"min": low, "max": high, "ratio": high / low if kls else math.nan}


def plot_frontier(rows: list[dict]) -> Figure:
    """Gain in held-out true reward over each seed's reference against KL(policy || reference): one line per
    curve through its checkpoints (seed means, ±1.96 SE of the gain, ± half the KL's range over seeds); best-of-N
    dashed, at its KL bound."""
    table = curve_table(rows)
    settings = list(dict.fromkeys(row["setting"] for row in table))
    figure = Figure(figsize=(7.5 * len(settings), 5), layout="constrained")
    axes = figure.subplots(1, len(settings), squeeze=False)[0]
    betas = sorted({row["beta"] for row in table if row["method"] in BETA_METHODS})
    markers = dict(zip(betas, "os^Dv<>p*h"))
    for axis, setting in zip(axes, settings):
        for method, beta in dict.fromkeys((r["method"], r["beta"]) for r in table if r["setting"] == setting):
            points = [r for r in table if (r["setting"], r["method"], r["beta"]) == (setting, method, beta)]
            axis.errorbar(
                [p["kl"] for p in points],
                [p["gain"] for p in points],
                xerr=[p["kl_spread"] for p in points],
                yerr=[1.96 * p["gain_se"] for p in points],
                fmt=("--" if method.startswith("bon") else "-") + markers.get(beta, "o"),
                color=COLORS[method],
                capsize=2,
                markersize=4,
                linewidth=1.2,
                label=label(method, beta),
            )
        axis.axhline(0, color="black", linewidth=0.6)
        axis.set(
            title=f"{setting}: mean over seeds, 95 % intervals",
            xlabel="KL(policy || reference), nats",
            ylabel="held-out reward gain over the reference (VADER)",
        )
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    return figure


def final_table(rows: list[dict]) -> list[dict]:
    """The last checkpoint of each (setting, method, beta): seed means and half-ranges."""
    last: dict[tuple, list[dict]] = {}
    for key, row in final_rows(rows).items():
        last.setdefault((key[1], key[2], key[3]), []).append(row)
    return [
        {
            "setting": setting,
            "method": method,
            "beta": beta,
            "seeds": len(group),
            "step": max(r["step"] for r in group),
            "reward": statistics.fmean(r["reward_mean"] for r in group),
            "reward_spread": _spread([r["reward_mean"] for r in group]),
            "gain": statistics.fmean(r.get("reward_gain", math.nan) for r in group),
            "kl": statistics.fmean(r["kl"] for r in group),
            "kl_spread": _spread([r["kl"] for r in group]),
            "win_rate": statistics.fmean(r["win_rate"] for r in group),
        }
        for (setting, method, beta), group in last.items()
    ]


def _spread(values: list[float]) -> float:
    """Half the range across seeds (0 for one seed)."""
    return (max(values) - min(values)) / 2 if values else math.nan


def final_rows(rows: list[dict]) -> dict[tuple, dict]:
    """{(seed, setting, method, beta): that run's last checkpoint}."""
    last: dict[tuple, dict] = {}
    for row in rows:
        if row["step"] >= last.get(run_of(row), {"step": -1})["step"]:
            last[run_of(row)] = row
    return last


def beta_orders_kl(rows: list[dict]) -> list[dict]:
    """Per setting and beta-swept method: Spearman(beta, final KL) for each seed, and its mean over seeds.

    -1 means a larger beta always ended closer to the reference: beta orders the KL, as the KL-regularised
    objective says it should.
    """
    last = {key: row for key, row in final_rows(rows).items() if key[2] in BETA_METHODS}
    out = []
    for setting, method in dict.fromkeys((key[1], key[2]) for key in last):
        per_seed = {}
        for seed in sorted({key[0] for key in last if key[1:3] == (setting, method)}):
            runs = sorted((key[3], row["kl"]) for key, row in last.items() if key[:3] == (seed, setting, method))
            if len(runs) >= 2:
                per_seed[seed] = spearman([beta for beta, _ in runs], [kl for _, kl in runs])
        if per_seed:
            out.append(
                {
                    "setting": setting,
                    "method": method,
                    "per_seed": per_seed,
                    "mean": statistics.fmean(per_seed.values()),
                }
            )
    return out


def odpo_minus_dpo(rows: list[dict]) -> list[dict]:
    """ODPO's held-out reward minus DPO's at the same seed, beta and (last) step, paired over prompts.

    Per setting: each prompt's difference is averaged over the matched (seed, beta) runs; the mean of those over
    prompts comes with a 95 % interval (1.96 standard errors over prompts). Also per beta (seed means): the reward
    and the KL difference, for reading the frontier at matched KL.
    """
    last = final_rows(rows)
    out = []
    for setting in dict.fromkeys(key[1] for key in last):
        matched = [
            (row, last[(seed, st, "odpo", beta)])
            for (seed, st, method, beta), row in last.items()
            if st == setting and method == "dpo" and (seed, st, "odpo", beta) in last
        ]
        matched = [(d, o) for d, o in matched if "rewards" in d and "rewards" in o]
        if not matched:
            continue
        per_prompt = [
            statistics.fmean(o["rewards"][i] - d["rewards"][i] for d, o in matched)
            for i in range(len(matched[0][0]["rewards"]))
        ]
        mean = statistics.fmean(per_prompt)
        half = 1.96 * statistics.stdev(per_prompt) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else math.nan
        by_beta = {}
        for d, o in matched:
            by_beta.setdefault(d["beta"], []).append((o["reward_mean"] - d["reward_mean"], o["kl"] - d["kl"]))
        out.append(
            {
                "setting": setting,
                "runs": len(matched),
                "prompts": len(per_prompt),
                "reward": mean,
                "ci95": half,
                "by_beta": [
                    {
                        "beta": beta,
                        "reward": statistics.fmean(r for r, _ in diffs),
                        "kl": statistics.fmean(k for _, k in diffs),
                    }
                    for beta, diffs in sorted(by_beta.items())
                ],
            }
        )
    return out


def costs(rows: list[dict]) -> list[dict]:
    """Per method (and beta): mean over seeds of the run's training seconds (evaluations excluded), samples drawn
    while training (best-of-N: at answer time, N per prompt), and the models it holds (`MODELS_HELD`)."""
    out = []
    for key, group in _by_curve_final(rows).items():
        out.append(
            {
                "setting": key[0],
                "method": key[1],
                "beta": key[2],
                "steps": max(r["step"] for r in group),
                "seconds_train": statistics.fmean(r["seconds_train"] for r in group),
                "samples_drawn": statistics.fmean(r["samples_drawn"] for r in group),
                "models": MODELS_HELD[key[1]],
            }
        )
    return out


def _by_curve_final(rows: list[dict]) -> dict[tuple, list[dict]]:
    grouped: dict[tuple, list[dict]] = {}
    for key, row in final_rows(rows).items():
        grouped.setdefault(key[1:], []).append(row)
    return grouped


def common_top(rows: list[dict], curve_a: tuple, curve_b: tuple) -> float:
    """The largest KL both curves reach in every seed (each curve's own largest checkpoint KL, the smallest of them)."""
    by_curve = curves(rows)
    tops = [
        max(row["kl"] for row in seed_rows)
        for curve in (curve_a, curve_b)
        for seed_rows in by_curve.get(curve, {}).values()
    ]
    return min(tops) if tops else math.nan


def comparisons(rows: list[dict], methods, betas, kls) -> list[dict]:
    """DPO (its first beta) against every other curve (`matched_kl`) at the profile's `kls` and at the largest KL
    both reach (`common_top`, rounded down to 0.01 nats)."""
    if "dpo" not in methods:
        return []
    dpo = ("all pairs", "dpo", betas[0])
    out = []
    for other in (key for key in curves(rows) if key != dpo and key[0] == "all pairs"):
        top = math.floor(100 * common_top(rows, dpo, other)) / 100
        at = sorted(set(kls) | ({top} if math.isfinite(top) else set()))
        out.append({"a": list(dpo), "b": list(other), "at": matched_kl(rows, dpo, other, at)})
    return out


def markdown_table(summary: dict) -> str:
    ran = summary["methods"]
    best_of_n = any(method.startswith("bon") for method in ran)
    settings = [f"{summary['runs']} runs in {summary['seconds'] / 60:.1f} min: {', '.join(LABELS[m] for m in ran)}"]
    settings.append(f"seeds {summary['seeds']}")
    settings += [f"DPO/ODPO betas {summary['betas']}"] if any(m in BETA_METHODS for m in ran) else []
    settings += [f"RLOO beta {summary['rloo_beta']}"] if any(m.startswith("rloo") for m in ran) else []
    settings += [f"best-of-N for N in {summary['bon_ns']}"] if best_of_n else []
    span = summary["kl_span"]
    lines = [
        f"# Reward-KL frontier ({summary['profile']} profile, {summary['device']}, {summary['precision']})",
        "",
        "; ".join(settings) + f"; {summary['train_prompts']} openings for pairs, "
        f"{summary['heldout_prompts']} held-out prompts, {summary['max_new_tokens']} new tokens.",
        "",
        "![frontier](frontier.png)",
        "",
        f"KL span of the non-reference checkpoints: {span['min']:.2f} to {span['max']:.2f} nats ({span['ratio']:.1f}x)."
        + (" Best-of-N's KL is the bound log N - (N-1)/N, an upper bound." if best_of_n else ""),
        "",
        "## Every checkpoint (seed means; gain over each seed's reference ± 1.96 SE)",
        "",
        "| setting | method | step | KL (nats) | gain | reward |",
        "|---|---|---|---|---|---|",
    ]
    for row in summary["curves"]:
        lines.append(
            f"| {row['setting']} | {label(row['method'], row['beta'])} | {row['step']} | "
            f"{row['kl']:.2f} ± {row['kl_spread']:.2f} | {row['gain']:+.3f} ± {1.96 * row['gain_se']:.3f} | "
            f"{row['reward']:+.3f} |"
        )
    if summary["matched_kl"]:
        lines += [
            "",
            "## At matched KL: DPO minus each other curve (pooled over seeds and prompts)",
            "",
            "| other | KL | difference ± SE | per seed | > 2 SE, seeds agree |",
            "|---|---|---|---|---|",
        ]
        for comparison in summary["matched_kl"]:
            for point in comparison["at"]:
                per_seed = ", ".join(f"{v:+.3f}" for v in point["per_seed"].values())
                lines.append(
                    f"| {label(comparison['b'][1], comparison['b'][2])} | {point['kl']:g} | "
                    f"{point['difference']:+.3f} ± {point['se']:.3f} | {per_seed} | "
                    f"{'yes' if point['separated'] else 'no'} |"
                )
    if summary["reward_models"]:
        lines += [
            "",
            "## The reward model (held-out pairs, fresh samples)",
            "",
            "| seed | train accuracy (last epoch) | held-out pair accuracy | Spearman with VADER, within prompts | seconds |",
            "|---|---|---|---|---|",
        ]
        for rm in summary["reward_models"]:
            lines.append(
                f"| {rm['seed']} | {rm['train_accuracy']:.3f} | {rm['heldout']['accuracy']:.3f} "
                f"({rm['heldout_pairs']}) | {rm['heldout']['spearman_within']:+.3f} | {rm['seconds']:.0f} |"
            )
    lines += [
        "",
        "## Costs (mean over seeds; the reward model's own training is in its table)",
        "",
        "| method | steps (best-of-N: N) | training seconds | samples drawn | models held |",
        "|---|---|---|---|---|",
    ]
    for row in summary["costs"]:
        lines.append(
            f"| {label(row['method'], row['beta'])} | {row['steps']} | {row['seconds_train']:.0f} | "
            f"{row['samples_drawn']:.0f} | {row['models']} |"
        )
    if summary["beta_orders_kl"]:
        lines += [
            "",
            "## Does beta order the KL? Spearman(beta, final KL)",
            "",
            "| setting | method | per seed | mean |",
            "|---|---|---|---|",
        ]
        for row in summary["beta_orders_kl"]:
            per_seed = ", ".join(f"{value:+.2f}" for value in row["per_seed"].values())
            lines.append(f"| {row['setting']} | {row['method'].upper()} | {per_seed} | {row['mean']:+.2f} |")
    for row in summary["odpo_minus_dpo"]:
        lines += [
            "",
            "## ODPO minus DPO at the same seed, beta and last step (95 % interval, paired over prompts)",
            "",
            f"{row['setting']}: {row['reward']:+.3f} ± {row['ci95']:.3f} over {row['runs']} matched runs",
        ]
    return "\n".join(lines) + "\n"
