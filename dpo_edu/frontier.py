"""The reward-KL frontier of DPO and ODPO: `dpo-edu frontier`.

For each seed: sample pairs from the reference (as `dpo_edu.run` does), then
for each data setting ("all pairs", and "small data": the first few pairs,
where the ODPO paper reports its largest gains), each method (DPO, ODPO) and
each beta, train a fresh copy of the reference and evaluate it at several
checkpoints on held-out prompts: (sequence KL, mean reward). A point further
up and to the left is better: more reward for less divergence.

Writes to the output directory:

    frontier.jsonl   one line per evaluation: seed, setting, method, beta, step, kl, reward_mean, ...
    frontier.png     reward against KL, both methods on one figure per setting
    frontier.md      the table (final checkpoints, mean over seeds and their spread) and the figure
    summary.json     sizes, times, and the ODPO-minus-DPO differences per seed
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

from matplotlib.figure import Figure

from .config import Profile, get_profile
from .data import load_preferences
from .evaluate import format_kl
from .generation import write_jsonl
from .models import load_model
from .prompts import load_prompts
from .rewards import sentiment
from .rundir import RunFolder
from .stages import MIXED_PRECISION_OF, RewardEvaluator, sample_pairs, train_config
from .train import TrainConfig, compute_reference_logps, pair_offsets, train_dpo
from .utils import device_name, get_device, precision_dtype, precision_name, seed_everything

METHODS = ("dpo", "odpo")
COLORS = {"dpo": "tab:blue", "odpo": "tab:orange"}


def settings_of(pairs: list[dict], profile: Profile) -> dict[str, tuple[list[dict], int]]:
    """{"all pairs": (pairs, 1 epoch)}, and with `frontier_small_pairs` > 0 also "small data": (the first few pairs,
    more epochs), trained for the same number of steps."""
    settings = {"all pairs": (pairs, 1)}
    if profile.frontier_small_pairs:
        small = pairs[: profile.frontier_small_pairs]
        settings["small data"] = (small, max(1, round(len(pairs) / len(small))))
    return settings


def setting_names(profile: Profile) -> tuple[str, ...]:
    return ("all pairs", "small data") if profile.frontier_small_pairs else ("all pairs",)


def frontier_config(profile: Profile, method: str, beta: float, seed: int, epochs: int, precision: str = "auto") -> TrainConfig:
    """The full run's trainer settings (`dpo_edu.stages.train_config`) with the sweep's own beta, rate, batch, warm-up and method."""
    return train_config(
        profile, beta=beta, learning_rate=profile.frontier_learning_rate, batch_size=profile.frontier_batch_size, epochs=epochs,
        warmup_steps=profile.frontier_warmup_steps,
        odpo_alpha=profile.frontier_odpo_alpha if method == "odpo" else None, odpo_score_scale=profile.frontier_odpo_score_scale,
        seed=seed, mixed_precision=MIXED_PRECISION_OF[precision],
    )


def frontier(profile: Profile | str | None = None, out: str | Path = "runs/frontier", *, dense: bool = False,
             model=None, overwrite: bool = False, resume: bool = False, progress: bool = True, precision: str | None = None,
             log=print) -> dict:
    """Sweep method x beta x seed (x data setting), evaluating checkpoints; returns the summary (also in out/summary.json).

    dense=True sweeps `profile.frontier_dense_betas` (more values: for a GPU).
    Each evaluation is appended to out/frontier.jsonl as it happens; after an
    interruption, `resume=True` keeps the training runs that finished (and
    each seed's pairs) and does the rest, with the options the sweep was started with.
    `precision`: as for `dpo_edu.run.run` (auto: bf16 where the hardware has it).
    """
    with RunFolder.check(out, "frontier", overwrite=overwrite, resume=resume) as folder:  # locked until the sweep ends
        if resume:
            profile, model, dense, precision = folder.resume_options(profile, model, dense=dense, precision=precision)
        profile = profile if isinstance(profile, Profile) else get_profile(profile)
        return _frontier(folder, profile, dense=dense, model=model, resume=resume, precision=precision or "auto",
                         log=log)


def _frontier(folder: RunFolder, profile: Profile, *, dense: bool, model, resume: bool, precision: str, log) -> dict:
    betas = profile.frontier_dense_betas if dense else profile.frontier_betas
    for beta in betas:  # fail before any work
        for method in METHODS:
            frontier_config(profile, method, beta, 0, 1, precision)
    started = time.perf_counter()
    device = get_device()
    reference, tokenizer = load_model(model, device=device)
    reference.eval().requires_grad_(False)
    if not resume:
        folder.start(profile=profile.name, model=None if model is None else str(model), dense=dense, precision=precision)
    try:
        rows = _sweep(profile, betas, folder, reference, tokenizer, model, device, resume=resume, precision=precision, log=log)
    except BaseException:
        folder.abandon()  # nothing once a seed's pairs are written; before that, the folder goes and a replaced one comes back
        raise
    out = folder.path
    figure = plot_frontier(rows)
    figure.savefig(out / "frontier.png", dpi=110)
    offsets = {seed: offset_stats(load_preferences(out / f"pairs_seed{seed}.jsonl", require_scores=True, log=None),
                                  profile.frontier_odpo_alpha, profile.frontier_odpo_score_scale) for seed in profile.frontier_seeds}
    summary = {
        "profile": profile.name, "device": device_name(device), "precision": precision_name(precision_dtype(device, precision)),
        "betas": list(betas), "seeds": list(profile.frontier_seeds), "settings": list(setting_names(profile)),
        "odpo_alpha": profile.frontier_odpo_alpha, "odpo_score_scale": profile.frontier_odpo_score_scale,
        "train_prompts": profile.frontier_train_prompts, "heldout_prompts": profile.frontier_heldout_prompts,
        "runs": len(_run_keys(profile, betas)), "final": final_table(rows), "beta_orders_kl": beta_orders_kl(rows),
        "odpo_minus_dpo": odpo_minus_dpo(rows), "offsets": offsets, "resumed": resume, "seconds": time.perf_counter() - started,
    }
    (out / "frontier.md").write_text(markdown_table(summary), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")  # last: it is finished
    log(f"done in {summary['seconds']:.0f} s; see {out / 'frontier.md'}")
    return summary


def _run_keys(profile: Profile, betas) -> list[tuple]:
    """(seed, setting, method, beta) of every training run of the sweep."""
    return [(seed, setting, method, beta) for seed in profile.frontier_seeds for setting in setting_names(profile)
            for method in METHODS for beta in betas]


def _key(row: dict) -> tuple:
    return row["seed"], row["setting"], row["method"], row["beta"]


def finished_rows(path: Path) -> list[dict]:
    """The rows of frontier.jsonl that belong to training runs which finished (their last row says "final")."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    finished = {_key(row) for row in rows if row.get("final")}
    return [row for row in rows if _key(row) in finished]


def _seed_pairs(reference, tokenizer, prompts: list[str], profile: Profile, seed: int, path: Path, precision: str = "auto") -> list[dict]:
    """The seed's preference pairs: read back from `path` when a resumed sweep already wrote them, else sampled and written."""
    if path.is_file():
        return load_preferences(path, require_scores=True, log=None)
    pairs, _ = sample_pairs(reference, tokenizer, prompts, sentiment, per_prompt=profile.run_samples_per_prompt,
                            max_new_tokens=profile.frontier_max_new_tokens, batch_size=profile.run_sample_batch_size, seed=seed,
                            rule=profile.run_pairing, min_gap=profile.run_min_gap, precision=precision)
    write_jsonl(pairs, path)
    return pairs


def _sweep(profile: Profile, betas, folder: RunFolder, reference, tokenizer, model, device, *, resume: bool, precision: str,
           log) -> list[dict]:
    """Train and evaluate every run not yet finished; append each row to frontier.jsonl as it is made; return all rows."""
    out = folder.path
    rows_path = out / "frontier.jsonl"
    rows = finished_rows(rows_path) if resume else []
    write_jsonl(rows, rows_path)  # a resumed sweep drops the rows of the run it was in the middle of
    done = {_key(row) for row in rows}
    todo = [key for key in _run_keys(profile, betas) if key not in done]
    log(f"frontier on {device_name(device)} ({precision_name(precision_dtype(device, precision))}), profile {profile.name}: {len(todo)} training runs to do"
        + (f" ({len(done)} finished before)" if done else "")
        + f" ({len(profile.frontier_seeds)} seeds x {len(setting_names(profile))} settings x {len(METHODS)} methods x {len(betas)} betas)")
    train_prompts = load_prompts("train")[: profile.frontier_train_prompts]
    heldout_prompts = load_prompts("heldout")[: profile.frontier_heldout_prompts]
    with rows_path.open("a", encoding="utf-8") as rows_file:
        def record(row: dict) -> None:
            rows.append(row)
            rows_file.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows_file.flush()

        for seed in profile.frontier_seeds:
            if not any(key[0] == seed for key in todo):
                continue
            seed_everything(seed)
            pairs = _seed_pairs(reference, tokenizer, train_prompts, profile, seed, out / f"pairs_seed{seed}.jsonl", precision)
            folder.keep()  # the sweep's first result is on disk
            evaluator = RewardEvaluator(reference, tokenizer, heldout_prompts, sentiment, max_new_tokens=profile.frontier_max_new_tokens,
                                        batch_size=profile.run_sample_batch_size, seed=seed, precision=precision, reference=reference)
            reference_rewards = evaluator.reference_rewards
            for setting, (setting_pairs, epochs) in settings_of(pairs, profile).items():
                keys = [key for key in todo if key[:2] == (seed, setting)]
                if not keys:
                    continue
                reference_logps = compute_reference_logps(reference, tokenizer, setting_pairs, frontier_config(profile, "dpo", 1.0, seed, epochs, precision))
                for _, _, method, beta in keys:
                    clock = time.perf_counter()
                    run = {"seed": seed, "setting": setting, "method": method, "beta": beta, "pairs": len(setting_pairs)}
                    record({**run, "step": 0, "kl": 0.0, "kl_se": 0.0, "reward_mean": statistics.fmean(reference_rewards), "win_rate": 0.5})
                    config = frontier_config(profile, method, beta, seed, epochs, precision)
                    policy, _ = load_model(model, device=device)  # a fresh copy of the reference

                    def evaluate(step_record, policy=policy, run=run):
                        last = step_record["step"] == step_record["steps_total"]
                        if step_record["step"] % profile.frontier_eval_every and not last:
                            return None
                        evaluator(policy, step_record["step"])
                        result = evaluator.results.pop()
                        record({**run, "step": step_record["step"], "train_loss": step_record["loss"],
                                **{key: step_record[key] for key in ("rewards/chosen", "rewards/rejected")},
                                **{k: v for k, v in result.items() if k not in ("samples", "rewards", "lengths")},
                                # the last checkpoint keeps each prompt's reward: ODPO - DPO is paired over prompts
                                **({"rewards": result["rewards"], "final": True} if last else {})})
                        return None

                    train_dpo(policy, tokenizer, setting_pairs, config, on_step=evaluate, progress=False, reference=reference_logps, log=None)
                    final = rows[-1]
                    log(f"seed {seed} {setting:>10} {method:>4} beta={beta:<5}: reward {final['reward_mean']:+.3f}, "
                        f"{format_kl(final['kl'], final['kl_se'])} after {final['step']} steps ({time.perf_counter() - clock:.0f} s)")
                    del policy
    return rows


def _spread(values: list[float]) -> float:
    """Half the range across seeds (0 for one seed): the error bars of the figure and the table."""
    return (max(values) - min(values)) / 2 if values else math.nan


def _grouped(rows: list[dict]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["setting"], row["method"], row["beta"], row["step"]), []).append(row)
    return groups


def plot_frontier(rows: list[dict]) -> Figure:
    """Held-out reward against KL(policy || reference): every checkpoint of every run (faint), seed means with their
    spread (markers, one shade per beta), and each method's Pareto envelope of the seed means (a step line)."""
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    betas = sorted({row["beta"] for row in rows})
    figure = Figure(figsize=(6.5 * len(settings), 4.5), layout="constrained")
    axes = figure.subplots(1, len(settings), squeeze=False)[0]
    groups = _grouped(rows)
    markers = dict(zip(betas, "os^Dv<>p*h"))
    for axis, setting in zip(axes, settings):
        for method in METHODS:
            for row in rows:  # each seed's checkpoint, faint
                if row["setting"] == setting and row["method"] == method:
                    axis.scatter(row["kl"], row["reward_mean"], color=COLORS[method], alpha=0.2, s=10)
            points = []
            for beta in betas:
                keys = sorted(key for key in groups if key[:3] == (setting, method, beta))
                kls = [statistics.fmean(r["kl"] for r in groups[key]) for key in keys]
                rewards = [statistics.fmean(r["reward_mean"] for r in groups[key]) for key in keys]
                points += zip(kls, rewards)
                axis.errorbar(kls, rewards, xerr=[_spread([r["kl"] for r in groups[key]]) for key in keys],
                              yerr=[_spread([r["reward_mean"] for r in groups[key]]) for key in keys], fmt=markers[beta],
                              color=COLORS[method], capsize=2, markersize=5, linewidth=0.8,
                              label=f"{method.upper()} beta={beta}")
            envelope = pareto_envelope(points)
            axis.step([kl for kl, _ in envelope], [reward for _, reward in envelope], where="post", color=COLORS[method],
                      linewidth=2, alpha=0.8, label=f"{method.upper()} envelope")
        axis.set(title=f"{setting}", xlabel="KL(policy || reference), nats", ylabel="held-out mean reward (VADER)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, ncol=2)
    return figure


def final_table(rows: list[dict]) -> list[dict]:
    """The last checkpoint of each (setting, method, beta): seed means and half-ranges."""
    last: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["setting"], row["method"], row["beta"], row["seed"])
        if row["step"] >= last.get(key, {"step": -1})["step"]:
            last[key] = row
    table: dict[tuple, list[dict]] = {}
    for (setting, method, beta, _), row in last.items():
        table.setdefault((setting, method, beta), []).append(row)
    return [
        {"setting": setting, "method": method, "beta": beta, "seeds": len(group), "step": group[0]["step"],
         "reward": statistics.fmean(r["reward_mean"] for r in group), "reward_spread": _spread([r["reward_mean"] for r in group]),
         "kl": statistics.fmean(r["kl"] for r in group), "kl_spread": _spread([r["kl"] for r in group]),
         "win_rate": statistics.fmean(r["win_rate"] for r in group)}
        for (setting, method, beta), group in table.items()
    ]


def final_rows(rows: list[dict]) -> dict[tuple, dict]:
    """{(seed, setting, method, beta): that run's last checkpoint}."""
    last: dict[tuple, dict] = {}
    for row in rows:
        if row["step"] >= last.get(_key(row), {"step": -1})["step"]:
            last[_key(row)] = row
    return last


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for index in order[start:end + 1]:
            out[index] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation: Pearson's on the ranks (scipy is not a dependency of the course)."""
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / norm if norm else math.nan


def beta_orders_kl(rows: list[dict]) -> list[dict]:
    """Per setting and method: Spearman(beta, final KL) for each seed, and its mean over seeds.

    -1 means a larger beta always ended closer to the reference: beta orders the KL, as the KL-regularised
    objective says it should.
    """
    last = final_rows(rows)
    out = []
    for setting, method in dict.fromkeys((key[1], key[2]) for key in last):
        per_seed = {}
        for seed in sorted({key[0] for key in last if key[1:3] == (setting, method)}):
            runs = sorted((key[3], row["kl"]) for key, row in last.items() if key[:3] == (seed, setting, method))
            if len(runs) >= 2:
                per_seed[seed] = spearman([beta for beta, _ in runs], [kl for _, kl in runs])
        if per_seed:
            out.append({"setting": setting, "method": method, "per_seed": per_seed, "mean": statistics.fmean(per_seed.values())})
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
        matched = [(row, last[(seed, st, "odpo", beta)]) for (seed, st, method, beta), row in last.items()
                   if st == setting and method == "dpo" and (seed, st, "odpo", beta) in last]
        matched = [(d, o) for d, o in matched if "rewards" in d and "rewards" in o]
        if not matched:
            continue
        per_prompt = [statistics.fmean(o["rewards"][i] - d["rewards"][i] for d, o in matched) for i in range(len(matched[0][0]["rewards"]))]
        mean = statistics.fmean(per_prompt)
        half = 1.96 * statistics.stdev(per_prompt) / math.sqrt(len(per_prompt)) if len(per_prompt) > 1 else math.nan
        by_beta = {}
        for d, o in matched:
            by_beta.setdefault(d["beta"], []).append((o["reward_mean"] - d["reward_mean"], o["kl"] - d["kl"]))
        out.append({"setting": setting, "runs": len(matched), "prompts": len(per_prompt), "reward": mean, "ci95": half,
                    "by_beta": [{"beta": beta, "reward": statistics.fmean(r for r, _ in diffs), "kl": statistics.fmean(k for _, k in diffs)}
                                for beta, diffs in sorted(by_beta.items())]})
    return out


def pareto_envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (kl, reward) points no other point beats with less or equal KL and more reward, by increasing KL."""
    envelope: list[tuple[float, float]] = []
    for kl, reward in sorted(points, key=lambda point: (point[0], -point[1])):
        if not envelope or reward > envelope[-1][1]:
            envelope.append((kl, reward))
    return envelope


def offset_stats(pairs: list[dict], alpha: float, scale: float) -> dict:
    """How ODPO's offsets fall on these pairs: the share above 0 (stricter than DPO), below 0 (laxer), and quantiles."""
    offsets = sorted(pair_offsets(pairs, alpha, scale).tolist())
    return {"pairs": len(offsets), "positive": sum(o > 0 for o in offsets) / len(offsets),
            "negative": sum(o < 0 for o in offsets) / len(offsets), "min": offsets[0],
            "median": offsets[len(offsets) // 2], "max": offsets[-1]}


def markdown_table(summary: dict) -> str:
    lines = [
        f"# Reward-KL frontier: DPO and ODPO ({summary['profile']} profile, {summary['device']})", "",
        f"{summary['runs']} training runs in {summary['seconds'] / 60:.1f} min; seeds {summary['seeds']}; betas {summary['betas']}; "
        f"ODPO offset alpha * log({summary['odpo_score_scale']:g} * score gap) with alpha = {summary['odpo_alpha']}; "
        f"{summary['train_prompts']} openings for pairs, {summary['heldout_prompts']} held-out prompts.", "",
        "![frontier](frontier.png)", "",
        "## Does beta order the KL? Spearman(beta, final KL)", "",
        "| setting | method | per seed | mean |", "|---|---|---|---|",
    ]
    for row in summary["beta_orders_kl"]:
        per_seed = ", ".join(f"{value:+.2f}" for value in row["per_seed"].values())
        lines.append(f"| {row['setting']} | {row['method'].upper()} | {per_seed} | {row['mean']:+.2f} |")
    lines += ["", "## Last checkpoint (mean over seeds ± half their range)", "",
              "| setting | method | beta | step | reward | KL (nats) | win rate |", "|---|---|---|---|---|---|---|"]
    for row in summary["final"]:
        lines.append(f"| {row['setting']} | {row['method'].upper()} | {row['beta']} | {row['step']} | {row['reward']:+.3f} ± {row['reward_spread']:.3f} "
                     f"| {row['kl']:.2f} ± {row['kl_spread']:.2f} | {100 * row['win_rate']:.1f} % |")
    lines += ["", "## ODPO minus DPO at the same seed, beta and last step (95 % interval, paired over prompts)", "",
              "| setting | matched runs | prompts | reward | per beta: reward, KL |", "|---|---|---|---|---|"]
    for row in summary["odpo_minus_dpo"]:
        per_beta = "; ".join(f"{b['beta']}: {b['reward']:+.3f}, {b['kl']:+.2f}" for b in row["by_beta"])
        lines.append(f"| {row['setting']} | {row['runs']} | {row['prompts']} | {row['reward']:+.3f} ± {row['ci95']:.3f} | {per_beta} |")
    lines += ["", "## ODPO's offsets on each seed's pairs", "", "| seed | pairs | > 0 | < 0 | min | median | max |", "|---|---|---|---|---|---|---|"]
    for seed, row in summary["offsets"].items():
        lines.append(f"| {seed} | {row['pairs']} | {100 * row['positive']:.0f} % | {100 * row['negative']:.0f} % | {row['min']:+.2f} "
                     f"| {row['median']:+.2f} | {row['max']:+.2f} |")
    return "\n".join(lines) + "\n"
