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
from .evaluate import evaluate_policy, format_kl
from .generation import make_pairs, sample_completions, write_jsonl
from .models import load_model
from .prompts import load_prompts
from .rewards import sentiment_rewards
from .rundir import RunFolder
from .run import MIXED_PRECISION_OF, train_config
from .train import TrainConfig, compute_reference_logps, train_dpo
from .utils import device_name, get_device, precision_dtype, precision_name, seed_everything

METHODS = ("dpo", "odpo")
COLORS = {"dpo": "tab:blue", "odpo": "tab:orange"}


def settings_of(pairs: list[dict], profile: Profile) -> dict[str, tuple[list[dict], int]]:
    """{"all pairs": (pairs, epochs), "small data": (the first few pairs, more epochs)}: the same number of steps each."""
    small = pairs[: profile.frontier_small_pairs]
    small_epochs = max(1, round(len(pairs) / max(len(small), 1)))
    return {"all pairs": (pairs, 1), "small data": (small, small_epochs)}


def frontier_config(profile: Profile, method: str, beta: float, seed: int, epochs: int, precision: str = "auto") -> TrainConfig:
    """The full run's trainer settings (`dpo_edu.run.train_config`) with the sweep's own beta, rate, warm-up and method."""
    return train_config(
        profile, beta=beta, learning_rate=profile.frontier_learning_rate, epochs=epochs, warmup_steps=profile.frontier_warmup_steps,
        odpo_alpha=profile.frontier_odpo_alpha if method == "odpo" else None, seed=seed, mixed_precision=MIXED_PRECISION_OF[precision],
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
    folder = RunFolder.check(out, "frontier", overwrite=overwrite, resume=resume)
    if resume:
        profile, model, dense, precision = folder.resume_options(profile, model, dense=dense, precision=precision)
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    precision = precision or "auto"
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
    summary = {
        "profile": profile.name, "device": device_name(device), "precision": precision_name(precision_dtype(device, precision)),
        "betas": list(betas), "seeds": list(profile.frontier_seeds),
        "odpo_alpha": profile.frontier_odpo_alpha, "train_prompts": profile.frontier_train_prompts,
        "heldout_prompts": profile.frontier_heldout_prompts, "runs": len(_run_keys(profile, betas)), "final": final_table(rows),
        "odpo_minus_dpo": odpo_minus_dpo(rows), "resumed": resume, "seconds": time.perf_counter() - started,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "frontier.md").write_text(markdown_table(summary), encoding="utf-8")
    log(f"done in {summary['seconds']:.0f} s; see {out / 'frontier.md'}")
    return summary


def _run_keys(profile: Profile, betas) -> list[tuple]:
    """(seed, setting, method, beta) of every training run of the sweep."""
    return [(seed, setting, method, beta) for seed in profile.frontier_seeds for setting in ("all pairs", "small data")
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
    samples = sample_completions(
        reference, tokenizer, prompts, per_prompt=profile.run_samples_per_prompt,
        max_new_tokens=profile.frontier_max_new_tokens, batch_size=profile.run_sample_batch_size, seed=seed, precision=precision,
    )
    pairs, _ = make_pairs(samples, sentiment_rewards(samples.texts), rule=profile.run_pairing, min_gap=profile.run_min_gap, tokenizer=tokenizer)
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
        + f" ({len(profile.frontier_seeds)} seeds x 2 settings x {len(METHODS)} methods x {len(betas)} betas)")
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
            reference_samples = sample_completions(
                reference, tokenizer, heldout_prompts, max_new_tokens=profile.frontier_max_new_tokens,
                batch_size=profile.run_sample_batch_size, seed=seed + 1, precision=precision,
            )
            reference_rewards = sentiment_rewards(reference_samples.texts)
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
                    total_steps = epochs * math.ceil(len(setting_pairs) / config.batch_size)

                    def evaluate(step_record, policy=policy, run=run, total_steps=total_steps):
                        if step_record["step"] % profile.frontier_eval_every and step_record["step"] != total_steps:
                            return None
                        result = evaluate_policy(
                            policy, reference, tokenizer, heldout_prompts, reference_rewards,
                            max_new_tokens=profile.frontier_max_new_tokens, batch_size=profile.run_sample_batch_size, seed=seed + 2,
                            precision=precision,
                        )
                        record({**run, "step": step_record["step"], "train_loss": step_record["loss"],
                                **{k: v for k, v in result.items() if k not in ("samples", "rewards")},
                                **({"final": True} if step_record["step"] == total_steps else {})})
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
    """Held-out reward against KL(policy || reference): every checkpoint of every run, seed means with their spread."""
    settings = list(dict.fromkeys(row["setting"] for row in rows))
    figure = Figure(figsize=(5.5 * len(settings), 4), layout="constrained")
    axes = figure.subplots(1, len(settings), squeeze=False)[0]
    groups = _grouped(rows)
    for axis, setting in zip(axes, settings):
        for method in METHODS:
            for row in rows:  # each seed's checkpoint, faint
                if row["setting"] == setting and row["method"] == method:
                    axis.scatter(row["kl"], row["reward_mean"], color=COLORS[method], alpha=0.25, s=12)
            keys = [key for key in groups if key[0] == setting and key[1] == method]
            kls = [statistics.fmean(r["kl"] for r in groups[key]) for key in keys]
            rewards = [statistics.fmean(r["reward_mean"] for r in groups[key]) for key in keys]
            axis.errorbar(kls, rewards, xerr=[_spread([r["kl"] for r in groups[key]]) for key in keys],
                          yerr=[_spread([r["reward_mean"] for r in groups[key]]) for key in keys],
                          fmt="o", color=COLORS[method], label=method.upper(), capsize=2, markersize=5)
        axis.set(title=f"{setting}", xlabel="KL(policy || reference), nats", ylabel="held-out mean reward (VADER)")
        axis.grid(alpha=0.3)
        axis.legend()
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


def odpo_minus_dpo(rows: list[dict]) -> list[dict]:
    """Per seed and setting: ODPO's reward and KL minus DPO's, averaged over the same (beta, checkpoint) pairs."""
    index = {(r["seed"], r["setting"], r["method"], r["beta"], r["step"]): r for r in rows if r["step"] > 0}
    out = []
    for seed, setting in dict.fromkeys((r["seed"], r["setting"]) for r in rows):
        matched = [(index[(seed, setting, "odpo", b, s)], row) for (sd, st, m, b, s), row in index.items()
                   if sd == seed and st == setting and m == "dpo" and (seed, setting, "odpo", b, s) in index]
        if matched:
            out.append({"seed": seed, "setting": setting, "checkpoints": len(matched),
                        "reward": statistics.fmean(o["reward_mean"] - d["reward_mean"] for o, d in matched),
                        "kl": statistics.fmean(o["kl"] - d["kl"] for o, d in matched)})
    return out


def markdown_table(summary: dict) -> str:
    lines = [
        f"# Reward-KL frontier: DPO and ODPO ({summary['profile']} profile, {summary['device']})", "",
        f"{summary['runs']} training runs in {summary['seconds'] / 60:.1f} min; seeds {summary['seeds']}; "
        f"ODPO alpha = {summary['odpo_alpha']}; {summary['heldout_prompts']} held-out prompts.", "",
        "![frontier](frontier.png)", "",
        "## Last checkpoint (mean over seeds ± half their range)", "",
        "| setting | method | beta | step | reward | KL (nats) | win rate |", "|---|---|---|---|---|---|---|",
    ]
    for row in summary["final"]:
        lines.append(f"| {row['setting']} | {row['method'].upper()} | {row['beta']} | {row['step']} | {row['reward']:+.3f} ± {row['reward_spread']:.3f} "
                     f"| {row['kl']:.2f} ± {row['kl_spread']:.2f} | {100 * row['win_rate']:.1f} % |")
    lines += ["", "## ODPO minus DPO, at the same beta and checkpoint (per seed)", "", "| seed | setting | checkpoints | reward | KL |", "|---|---|---|---|---|"]
    for row in summary["odpo_minus_dpo"]:
        lines.append(f"| {row['seed']} | {row['setting']} | {row['checkpoints']} | {row['reward']:+.3f} | {row['kl']:+.2f} |")
    return "\n".join(lines) + "\n"
