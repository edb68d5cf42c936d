"""The full DPO run, start to finish: pairs -> training -> evaluation -> report.

    dpo-edu run [--profile smoke|full] [--out DIR] [--overwrite | --resume]

writes the run directory:

    DIR/pairs.jsonl      the preference pairs (prompt, chosen, rejected, chosen_score, rejected_score)
    DIR/pairs_counts.json how many pairs were formed and dropped, and the reference samples' mean reward
    DIR/checkpoints/     while training: the last checkpoint (`dpo-edu run --resume`); removed at the end
    DIR/metrics.jsonl    one line per optimizer step; evaluation steps carry "eval/..." keys too
    DIR/policy/          the trained policy (safetensors) and its tokenizer
    DIR/plots/*.png      loss, margins, accuracy; held-out reward and KL; reward histograms
    DIR/summary.json     every number of the report, for scripts
    DIR/report.md        the results table, the plots, five samples before and after

Notebook 06 walks the same steps cell by cell, calling the same functions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import torch

from .config import Profile, get_profile
from .evaluate import evaluate_policy, format_kl, mean_and_se
from .data import load_preferences
from .generation import make_pairs, sample_completions, write_jsonl
from .models import load_model, model_provenance
from .prompts import load_prompts
from . import checkpoint
from .report import implicit_rewards, markdown_report, plot_evaluation, plot_reward_histograms, plot_training, save_figures
from .rewards import sentiment_rewards
from .rundir import RunFolder
from .train import TrainConfig, train_dpo
from .utils import device_name, get_device, precision_dtype, precision_name, seed_everything

# `--precision` -> TrainConfig.mixed_precision (accelerate's names: "no" is float32)
MIXED_PRECISION_OF = {"auto": "auto", "fp32": "no", "bf16": "bf16", "fp16": "fp16"}
LOSS_SETTINGS = ("loss_type", "beta", "label_smoothing", "sft_weight", "simpo_gamma")  # what `loss=` (dpo-edu run --loss-type ...) may set
EVAL_KEYS = ("reward_mean", "reward_se", "reward_gain", "reward_gain_se", "win_rate", "kl", "kl_se")


def train_config(profile: Profile, **overrides) -> TrainConfig:
    """The trainer's settings for the full run at `profile`'s sizes (plain-text prompts, no chat template)."""
    settings = dict(
        beta=profile.run_beta, learning_rate=profile.run_learning_rate, batch_size=profile.run_batch_size,
        epochs=profile.run_epochs, warmup_steps=profile.run_warmup_steps, max_length=profile.run_max_length,
        max_prompt_length=profile.run_max_prompt_length, use_chat_template=False, seed=profile.run_seed,
    )
    return TrainConfig(**{**settings, **overrides})


def build_pairs(model, tokenizer, prompts: list[str], profile: Profile, *, progress: bool = False,
                precision: str = "auto") -> tuple[list[dict], dict]:
    """Sample `run_samples_per_prompt` completions per prompt from `model`, score them with VADER, pair them."""
    samples = sample_completions(
        model, tokenizer, prompts, per_prompt=profile.run_samples_per_prompt, max_new_tokens=profile.run_max_new_tokens,
        batch_size=profile.run_sample_batch_size, seed=profile.run_seed, progress=progress, precision=precision,
    )
    scores = sentiment_rewards(samples.texts)
    pairs, counts = make_pairs(samples, scores, rule=profile.run_pairing, min_gap=profile.run_min_gap, tokenizer=tokenizer)
    mean, se = mean_and_se(scores)
    counts.update(samples=len(scores), sample_reward_mean=mean, sample_reward_se=se,
                  sample_reward_zero_fraction=sum(s == 0 for s in scores) / len(scores))
    return pairs, counts


class HeldOutEvaluator:
    """Evaluates the policy on held-out prompts against the reference's samples, drawn once at construction.

    The frozen reference is re-loaded from disk for each evaluation and freed
    after it, so no second copy of the model sits in memory during training.
    """

    def __init__(self, reference, tokenizer, prompts: list[str], profile: Profile, model_source=None, precision: str = "auto") -> None:
        self.tokenizer, self.prompts, self.profile, self.model_source = tokenizer, prompts, profile, model_source
        self.precision = precision
        samples = sample_completions(
            reference, tokenizer, prompts, max_new_tokens=profile.run_max_new_tokens,
            batch_size=profile.run_sample_batch_size, seed=profile.run_seed + 1, precision=precision,
        )
        self.reference_texts = samples.texts
        self.reference_lengths = [len(ids) for ids in samples.completion_ids]
        self.reference_rewards = sentiment_rewards(samples.texts)
        self.results: list[dict] = []

    def __call__(self, policy, step: int, *, policy_is_reference: bool = False) -> dict:
        reference = None
        if not policy_is_reference:
            device = next(policy.parameters()).device
            reference, _ = load_model(self.model_source, device=device)
            reference.eval().requires_grad_(False)
        result = evaluate_policy(
            policy, reference, self.tokenizer, self.prompts, self.reference_rewards,
            max_new_tokens=self.profile.run_max_new_tokens, batch_size=self.profile.run_sample_batch_size,
            seed=self.profile.run_seed + 2, precision=self.precision,
        )
        del reference
        self.results.append({"step": step, **result})
        return {f"eval/{key}": result[key] for key in EVAL_KEYS}


def describe_precision(arithmetic: str) -> str:
    """'bf16 autocast (float32 weights)' or 'float32', for logs and reports."""
    return "float32" if arithmetic == "fp32" else f"{arithmetic} autocast (float32 weights)"


def peak_memory_mb(device: torch.device) -> float:
    """The largest memory use of this process so far: CUDA's allocator peak on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def save_policy(model, tokenizer, target: Path) -> Path:
    """save_pretrained (safetensors) into a temporary folder, then rename it to `target`."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    staging.rename(target)
    return target


def run(profile: Profile | str | None = None, out: str | Path = "runs/dpo", *, model=None, overwrite: bool = False,
        resume: bool = False, progress: bool = True, precision: str | None = None, loss: dict | None = None, log=print) -> dict:
    """Pairs, training, evaluation and report for `profile`; returns the summary (also in out/summary.json).

    `out` is a run folder (`dpo_edu.rundir`): an existing one is replaced only
    with `overwrite=True`, and only if it is a dpo-edu run. Training writes a
    checkpoint to out/checkpoints every `run_checkpoint_every` steps and on
    Ctrl-C; `resume=True` continues an interrupted run in `out` with the profile
    and model it was started with: its pairs if they were written, its last
    checkpoint if there is one, and ends with the metrics of an uninterrupted
    run. The checkpoints are removed once the run has finished: policy/ holds the result.
    `precision` ("auto", the default; "fp32"; "bf16"; "fp16"): the autocast of
    sampling, training and evaluation (`dpo_edu.utils.precision_dtype`; auto is
    bf16 where the hardware has it); the weights stay float32 either way.
    `loss`: TrainConfig's loss settings over the profile's, e.g. {"loss_type": "simpo", "beta": 2.0}
    (fields: loss_type, beta, label_smoothing, sft_weight, simpo_gamma; `dpo-edu run --loss-type ...`).
    """
    folder = RunFolder.check(out, "run", overwrite=overwrite, resume=resume)
    if resume:
        profile, model, precision, loss = folder.resume_options(profile, model, precision=precision, loss=loss)
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    precision = precision or "auto"
    unknown = set(loss or {}) - set(LOSS_SETTINGS)
    if unknown:
        raise ValueError(f"loss settings {sorted(unknown)} are not among {', '.join(LOSS_SETTINGS)}")
    config = train_config(profile, mixed_precision=MIXED_PRECISION_OF[precision], **(loss or {}))  # invalid settings fail here, before any work
    out = folder.path
    latest = checkpoint.latest_folder(out / "checkpoints") if resume else None
    continue_training = latest is not None
    if continue_training:
        checkpoint.verify(latest)  # a damaged checkpoint fails now, not after minutes of work
    reuse_pairs = resume and (out / "pairs.jsonl").is_file()
    started = time.perf_counter()
    seed_everything(profile.run_seed)
    device = get_device()
    arithmetic = precision_name(precision_dtype(device, precision))
    policy, tokenizer = load_model(model, device=device)  # a missing model fails here, before the run directory is touched
    provenance = model_provenance(model)  # which weights: after loading, so a cache built just now is named with its hash
    if not resume:
        folder.start(profile=profile.name, model=None if model is None else str(model), precision=precision, loss=loss or None)
    log(f"model {provenance['weights']} on {device_name(device)}, {describe_precision(arithmetic)}; profile {profile.name}; "
        f"{'resuming' if resume else 'writing'} {out}")
    train_prompts = load_prompts("train")[: profile.run_train_prompts]
    heldout_prompts = load_prompts("heldout")[: profile.run_heldout_prompts]
    try:
        if reuse_pairs:
            pairs = load_preferences(out / "pairs.jsonl", require_scores=True, log=log)
            pair_counts = json.loads((out / "pairs_counts.json").read_text(encoding="utf-8"))
        else:
            pairs, pair_counts = build_pairs(policy, tokenizer, train_prompts, profile, progress=progress, precision=precision)
            (out / "pairs_counts.json").write_text(json.dumps(pair_counts, indent=1) + "\n", encoding="utf-8")
            write_jsonl(pairs, out / "pairs.jsonl")  # the run's first result: --resume starts from here
    except BaseException:
        folder.abandon()  # a new folder goes, a replaced run comes back
        raise
    folder.keep()  # from here on the old run (if --overwrite replaced one) is gone, and this run is resumable
    if not continue_training:
        (out / "metrics.jsonl").unlink(missing_ok=True)  # steps logged before any checkpoint are trained again
    pairs_seconds = time.perf_counter() - started
    log(f"pairs: {pair_counts['pairs']} from {len(train_prompts)} prompts x {profile.run_samples_per_prompt} samples "
        f"(dropped: {pair_counts['small_gap']} with a score gap < {profile.run_min_gap}, {pair_counts['unusable_text']} unusable samples) "
        f"in {pairs_seconds:.0f} s")

    evaluator = HeldOutEvaluator(policy, tokenizer, heldout_prompts, profile, model_source=model, precision=precision)
    eval_seconds = 0.0

    def evaluate(step: int, policy_is_reference: bool = False) -> dict:
        nonlocal eval_seconds
        clock = time.perf_counter()
        result = evaluator(policy, step, policy_is_reference=policy_is_reference)
        eval_seconds += time.perf_counter() - clock
        log(f"eval at step {step}: reward {result['eval/reward_mean']:.3f} ± {result['eval/reward_se']:.3f}, "
            f"win rate {result['eval/win_rate']:.3f}, {format_kl(result['eval/kl'], result['eval/kl_se'])}")
        return result

    evaluate(0, policy_is_reference=True)
    steps_total = min(config.epochs * math.ceil(len(pairs) / config.batch_size), config.max_steps or math.inf)

    def on_step(record: dict) -> dict | None:
        if record["step"] % profile.run_eval_every == 0 or record["step"] == steps_total:
            return evaluate(record["step"])
        return None

    train_started = time.perf_counter()
    history = train_dpo(policy, tokenizer, pairs, config, metrics_path=out / "metrics.jsonl", on_step=on_step, progress=progress,
                        checkpoint_dir=out / "checkpoints", checkpoint_every=profile.run_checkpoint_every, resume=continue_training, log=log)
    train_seconds = time.perf_counter() - train_started
    if evaluator.results[-1]["step"] != len(history):  # resumed after the last step: evaluate the final policy again
        evaluate(len(history))
    save_policy(policy, tokenizer, out / "policy")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # policy/ now holds the result; the optimizer state is 2 GB
    # a resumed run's earlier evaluations live in metrics.jsonl; step 0 was just re-done (the same seeds, the same numbers)
    evaluations = evaluator.results[:1] + [
        {"step": row["step"], **{key: row[f"eval/{key}"] for key in EVAL_KEYS}} for row in history if "eval/kl" in row
    ]

    figures = {
        "training": plot_training(history),
        "heldout": plot_evaluation(evaluations),
        "reward_histograms": plot_reward_histograms(evaluator.reference_rewards, evaluator.results[-1]["rewards"]),
    }
    plot_paths = save_figures(figures, out / "plots")
    final = evaluator.results[-1]
    reference_mean, reference_se = mean_and_se(evaluator.reference_rewards)
    summary = {
        "model": provenance, "device": device_name(device), "precision": arithmetic, "profile": profile.name,
        "train_config": dataclasses.asdict(config), "pairs": pair_counts, "steps": len(history),
        "heldout_prompts": len(heldout_prompts),
        "step0_loss": history[0]["loss"], "step0_margin": history[0]["rewards/margins"], "implicit_rewards": implicit_rewards(history),
        "reference": {"reward_mean": reference_mean, "reward_se": reference_se},
        "final": {key: final[key] for key in EVAL_KEYS},
        "evaluations": [{"step": row["step"], **{key: row[key] for key in EVAL_KEYS}} for row in evaluations], "resumed": resume,
        "peak_memory_mb": peak_memory_mb(device),
        "seconds": {"pairs": pairs_seconds, "train": train_seconds, "evaluation": eval_seconds, "total": time.perf_counter() - started},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    examples = [
        {"prompt": prompt, "before": evaluator.reference_texts[i], "before_reward": evaluator.reference_rewards[i],
         "after": final["samples"][i], "after_reward": final["rewards"][i]}
        for i, prompt in enumerate(heldout_prompts[:5])
    ]
    (out / "report.md").write_text(markdown_report(summary, plot_paths, examples), encoding="utf-8")
    log(f"done in {summary['seconds']['total']:.0f} s: win rate {final['win_rate']:.3f}, reward gain "
        f"{final['reward_gain']:+.3f} ± {final['reward_gain_se']:.3f}, {format_kl(final['kl'], final['kl_se'])}; see {out / 'report.md'}")
    return summary
