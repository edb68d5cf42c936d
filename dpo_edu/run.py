"""A DPO run, start to finish: pairs -> training -> evaluation -> report (the stages are in `dpo_edu.stages`).

    dpo-edu run [--profile smoke|full] [--out DIR] [--overwrite | --resume]          the course's task
    dpo-edu run --prompts PROMPTS.txt --reward my_reward.py:reward [...]              your prompts and reward
    dpo-edu run --pairs PAIRS.jsonl [--heldout-fraction 0.1] [...]                    your preference pairs
    ... [--model PATH_OR_HUB_ID]                                                      another causal LM

The course's task: movie-review openings, four continuations each sampled
from the reference, scored by VADER, best against worst. `--prompts` and
`--reward` replace the openings and VADER; the reward is a function in TRL's
convention, `reward(prompts, completions, **kwargs) -> list[float]`. `--pairs`
replaces the whole sampling stage with your file (TRL's standard or
conversational format); whole prompts are held out for evaluation.

Writes the run directory:

    DIR/pairs.jsonl      the training pairs (TRL's standard format; sampled pairs also carry chosen_score, rejected_score)
    DIR/heldout_pairs.jsonl  (--pairs) the pairs held out for evaluation
    DIR/pairs_counts.json how many pairs were formed, dropped or held out; the reference samples' mean reward
    DIR/checkpoints/     while training: the last checkpoint (`dpo-edu run --resume`); removed at the end
    DIR/metrics.jsonl    one line per optimizer step; evaluation steps carry "eval/..." keys too
    DIR/policy/          the trained policy (safetensors) and its tokenizer: AutoModelForCausalLM.from_pretrained loads it
    DIR/plots/*.png      loss, margins, accuracy; held-out evaluation; reward histograms (a reward to score with)
    DIR/summary.json     every number of the report, for scripts
    DIR/report.md        the results table, the plots, five held-out prompts before and after

Notebook 06 walks the same steps cell by cell, calling the same functions.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint, rewards
from .config import Profile, get_profile
from .data import load_preferences
from .evaluate import mean_and_se
from .generation import write_jsonl
from .models import load_model, model_provenance
from .prompts import load_prompts, read_prompts
from .report import (implicit_rewards, markdown_pairs_report, markdown_report, plot_evaluation, plot_pair_evaluation,
                     plot_reward_histograms, plot_training, save_figures)
from .rundir import RunFolder
from .stages import (MIXED_PRECISION_OF, PairsEvaluator, RewardEvaluator, count_conversational, sample_pairs, save_policy,
                     split_heldout, standard_pairs, train_config)
from .train import train_dpo
from .utils import device_name, get_device, precision_dtype, precision_name, seed_everything

# what `loss=` (dpo-edu run --loss-type ... --max-length ...) may set over the profile's TrainConfig
LOSS_SETTINGS = ("loss_type", "beta", "label_smoothing", "sft_weight", "simpo_gamma", "max_length", "max_prompt_length")
HELDOUT_FRACTION = 0.1


@dataclasses.dataclass
class Task:
    """What a run trains on and how it is judged: the course's task, your prompts and reward, or your pairs."""
    kind: str  # "sentiment", "prompts" or "pairs"
    reward: Callable | None = None  # TRL-style reward function (None for "pairs")
    reward_name: str = "VADER"
    train_prompts: list | None = None
    heldout_prompts: list | None = None
    pairs_file: Path | None = None
    rows: list[dict] | None = None  # the pairs file's rows, read before the model loads

    @classmethod
    def of(cls, profile: Profile, *, pairs=None, prompts=None, reward=None, heldout_fraction: float = HELDOUT_FRACTION,
           read_pairs: bool = True, log=print) -> Task:
        """Read and check every input before any work: a bad file or reward fails here, in one line.

        `read_pairs=False`: a resumed run, whose pairs are already in its folder.
        """
        if pairs is not None and (prompts is not None or reward is not None):
            raise ValueError("--pairs trains on your pairs; --prompts and --reward sample new ones: give one or the other")
        if pairs is not None:
            return cls("pairs", pairs_file=Path(pairs), rows=load_preferences(pairs, log=log) if read_pairs else None, reward_name="")
        reward_fn = rewards.load_reward(reward) if reward is not None else rewards.sentiment
        name = reward if reward is not None else "VADER"
        if prompts is None:
            return cls("sentiment" if reward is None else "prompts", reward_fn, name,
                       load_prompts("train")[: profile.run_train_prompts], load_prompts("heldout")[: profile.run_heldout_prompts])
        if not heldout_fraction:
            raise ValueError("--prompts is evaluated on held-out prompts: --heldout-fraction must be above 0")
        train, heldout = split_heldout([{"prompt": p} for p in read_prompts(prompts)], heldout_fraction, profile.run_seed)
        if not heldout:
            raise ValueError(f"{prompts}: at least two different prompts are needed (one to train on, one held out)")
        return cls("prompts", reward_fn, name, [row["prompt"] for row in train][: profile.run_train_prompts],
                   [row["prompt"] for row in heldout][: profile.run_heldout_prompts])


def describe_precision(arithmetic: str) -> str:
    """'bf16 autocast (float32 weights)' or 'float32', for logs and reports."""
    return "float32" if arithmetic == "fp32" else f"{arithmetic} autocast (float32 weights)"


def peak_memory_mb(device: torch.device) -> float:
    """The largest memory use of this process so far: CUDA's allocator peak on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_pairs_stage(task: Task, policy, tokenizer, profile: Profile, out: Path, heldout_fraction: float, precision: str,
                     progress: bool) -> tuple[list[dict], dict]:
    """Stage 1-2: the training pairs, written to out/pairs.jsonl (and out/heldout_pairs.jsonl for --pairs)."""
    if task.kind == "pairs":
        train, heldout = split_heldout(task.rows, heldout_fraction, profile.run_seed)
        train, heldout = standard_pairs(tokenizer, train), standard_pairs(tokenizer, heldout)
        counts = {"source": str(task.pairs_file), "pairs": len(train), "heldout_pairs": len(heldout),
                  "conversational": count_conversational(task.rows), "prompts": len({repr(row["prompt"]) for row in train})}
        write_jsonl(heldout, out / "heldout_pairs.jsonl")
    else:
        train, counts = sample_pairs(policy, tokenizer, task.train_prompts, task.reward, per_prompt=profile.run_samples_per_prompt,
                                     max_new_tokens=profile.run_max_new_tokens, batch_size=profile.run_sample_batch_size,
                                     seed=profile.run_seed, rule=profile.run_pairing, min_gap=profile.run_min_gap,
                                     precision=precision, progress=progress)
    (out / "pairs_counts.json").write_text(json.dumps(counts, indent=1) + "\n", encoding="utf-8")
    write_jsonl(train, out / "pairs.jsonl")  # the run's first result: --resume starts from here
    return train, counts


def describe_pairs(task: Task, counts: dict, profile: Profile, seconds: float) -> str:
    if task.kind == "pairs":
        return (f"pairs: {counts['pairs']} for training, {counts['heldout_pairs']} held out (whole prompts), from {counts['source']} "
                f"({counts['conversational']} conversational)")
    return (f"pairs: {counts['pairs']} from {counts['prompts']} prompts x {profile.run_samples_per_prompt} samples scored by "
            f"{task.reward_name} (dropped: {counts['small_gap']} with a score gap < {profile.run_min_gap}, "
            f"{counts['unusable_text']} unusable samples) in {seconds:.0f} s")


def run(profile: Profile | str | None = None, out: str | Path = "runs/dpo", *, model=None, pairs=None, prompts=None,
        reward: str | None = None, heldout_fraction: float | None = None, overwrite: bool = False, resume: bool = False,
        progress: bool = True, precision: str | None = None, loss: dict | None = None, log=print) -> dict:
    """Pairs, training, evaluation and report; returns the summary (also in out/summary.json).

    Inputs (see the module docstring): nothing (the course's task), `prompts`
    (a .txt or .jsonl file) with `reward` ("module:function" or
    "path/to/file.py:function"), or `pairs` (a .jsonl preference file), of
    which `heldout_fraction` (default 0.1) is held out by prompt; the profile
    caps how many prompts are used (run_train_prompts, run_heldout_prompts).
    `model`: a saved model folder or hub id (default: the course's SmolLM2).

    `out` is a run folder (`dpo_edu.rundir`): an existing one is replaced only
    with `overwrite=True`, and only if it is a dpo-edu run. Training writes a
    checkpoint to out/checkpoints every `run_checkpoint_every` steps and on
    Ctrl-C; `resume=True` continues an interrupted run in `out` with the options
    it was started with: its pairs if they were written, its last checkpoint if
    there is one, and ends with the metrics of an uninterrupted run.
    `precision` ("auto", "fp32", "bf16", "fp16"): the autocast of sampling,
    training and evaluation; the weights stay float32 either way.
    `loss`: TrainConfig settings over the profile's (LOSS_SETTINGS), e.g. {"loss_type": "simpo", "beta": 2.0}.
    """
    folder = RunFolder.check(out, "run", overwrite=overwrite, resume=resume)
    if resume:
        profile, model, precision, loss, pairs, prompts, reward, heldout_fraction = folder.resume_options(
            profile, model, precision=precision, loss=loss, pairs=pairs, prompts=prompts, reward=reward,
            heldout_fraction=heldout_fraction)
    profile = profile if isinstance(profile, Profile) else get_profile(profile)
    precision, heldout_fraction = precision or "auto", HELDOUT_FRACTION if heldout_fraction is None else heldout_fraction
    unknown = set(loss or {}) - set(LOSS_SETTINGS)
    if unknown:
        raise ValueError(f"loss settings {sorted(unknown)} are not among {', '.join(LOSS_SETTINGS)}")
    config = train_config(profile, mixed_precision=MIXED_PRECISION_OF[precision], **(loss or {}))  # bad settings fail here
    reuse_pairs = resume and (folder.path / "pairs.jsonl").is_file()
    task = Task.of(profile, pairs=pairs, prompts=prompts, reward=reward, heldout_fraction=heldout_fraction,
                   read_pairs=not reuse_pairs, log=log)
    out = folder.path
    latest = checkpoint.latest_folder(out / "checkpoints") if resume else None
    if latest is not None:
        checkpoint.verify(latest)  # a damaged checkpoint fails now, not after minutes of work
    started = time.perf_counter()
    seed_everything(profile.run_seed)
    device = get_device()
    arithmetic = precision_name(precision_dtype(device, precision))
    policy, tokenizer = load_model(model, device=device)  # a missing model fails here, before the run directory is touched
    provenance = model_provenance(model)  # which weights: after loading, so a cache built just now is named with its hash
    if not resume:
        folder.start(profile=profile.name, model=None if model is None else str(model), precision=precision, loss=loss or None,
                     pairs=None if pairs is None else str(pairs), prompts=None if prompts is None else str(prompts),
                     reward=reward, heldout_fraction=heldout_fraction if task.kind != "sentiment" else None)
    log(f"model {provenance['weights']} on {device_name(device)}, {describe_precision(arithmetic)}; profile {profile.name}; "
        f"{'resuming' if resume else 'writing'} {out}")
    try:
        if reuse_pairs:
            train_pairs = load_preferences(out / "pairs.jsonl", log=log)
            pair_counts = json.loads((out / "pairs_counts.json").read_text(encoding="utf-8"))
        else:
            train_pairs, pair_counts = make_pairs_stage(task, policy, tokenizer, profile, out, heldout_fraction, precision, progress)
    except BaseException:
        folder.abandon()  # a new folder goes, a replaced run comes back
        raise
    folder.keep()  # from here on the old run (if --overwrite replaced one) is gone, and this run is resumable
    if latest is None:
        (out / "metrics.jsonl").unlink(missing_ok=True)  # steps logged before any checkpoint are trained again
    pairs_seconds = time.perf_counter() - started
    log(describe_pairs(task, pair_counts, profile, pairs_seconds))

    sizes = dict(max_new_tokens=profile.run_max_new_tokens, batch_size=profile.run_sample_batch_size, seed=profile.run_seed,
                 model_source=model, precision=precision)
    if task.kind == "pairs":
        heldout = load_preferences(out / "heldout_pairs.jsonl", log=None) if (out / "heldout_pairs.jsonl").stat().st_size else []
        evaluator = PairsEvaluator(policy, tokenizer, heldout, config, **sizes) if heldout else None
    else:
        evaluator = RewardEvaluator(policy, tokenizer, task.heldout_prompts, task.reward, **sizes)
    history, train_seconds, eval_seconds = train_stage(policy, tokenizer, train_pairs, config, evaluator, profile, out,
                                                       resume=latest is not None, progress=progress, log=log)
    save_policy(policy, tokenizer, out / "policy")
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # policy/ now holds the result; the optimizer state is 2 GB
    summary = {
        "task": task.kind, "inputs": {"pairs": pairs and str(pairs), "prompts": prompts and str(prompts), "reward": task.reward_name},
        "model": provenance, "device": device_name(device), "precision": arithmetic, "profile": profile.name,
        "train_config": dataclasses.asdict(config), "pairs": pair_counts, "steps": len(history),
        "step0_loss": history[0]["loss"], "step0_margin": history[0]["rewards/margins"], "implicit_rewards": implicit_rewards(history),
        "resumed": resume, "peak_memory_mb": peak_memory_mb(device),
        "seconds": {"pairs": pairs_seconds, "train": train_seconds, "evaluation": eval_seconds, "total": time.perf_counter() - started},
    }
    report_stage(summary, history, evaluator, out)
    result = evaluator.describe({f"eval/{key}": value for key, value in summary["final"].items()}) if evaluator else "no held-out pairs"
    log(f"done in {summary['seconds']['total']:.0f} s: {result}; see {out / 'report.md'}")
    return summary


def train_stage(policy, tokenizer, pairs: list[dict], config, evaluator, profile: Profile, out: Path, *, resume: bool,
                progress: bool, log) -> tuple[list[dict], float, float]:
    """Stage 3: DPO on `pairs`, with `evaluator` (if any) at step 0, every `run_eval_every` steps and at the last step.

    Returns (metrics per step, training seconds, of which evaluation seconds).
    """
    eval_seconds = 0.0

    def evaluate(step: int, policy_is_reference: bool = False) -> dict:
        nonlocal eval_seconds
        clock = time.perf_counter()
        result = evaluator(policy, step, policy_is_reference=policy_is_reference)
        eval_seconds += time.perf_counter() - clock
        log(f"eval at step {step}: {evaluator.describe(result)}")
        return result

    def on_step(record: dict) -> dict | None:
        due = record["step"] % profile.run_eval_every == 0 or record["step"] == record["steps_total"]
        return evaluate(record["step"]) if evaluator is not None and due else None

    if evaluator is not None:
        evaluate(0, policy_is_reference=True)
    started = time.perf_counter()
    history = train_dpo(policy, tokenizer, pairs, config, metrics_path=out / "metrics.jsonl", on_step=on_step, progress=progress,
                        checkpoint_dir=out / "checkpoints", checkpoint_every=profile.run_checkpoint_every, resume=resume, log=log)
    if evaluator is not None and evaluator.results[-1]["step"] != len(history):  # resumed after the last step: evaluate again
        evaluate(len(history))
    return history, time.perf_counter() - started, eval_seconds


def report_stage(summary: dict, history: list[dict], evaluator, out: Path) -> None:
    """Stage 5: plots, summary.json and report.md. A resumed run's earlier evaluations come from metrics.jsonl."""
    figures = {"training": plot_training(history)}
    examples = []
    if evaluator is not None:
        keys = evaluator.keys
        evaluations = evaluator.results[:1] + [
            {"step": row["step"], **{key: row[f"eval/{key}"] for key in keys}} for row in history if "eval/kl" in row]
        final = evaluator.results[-1]
        summary.update(final={key: final[key] for key in keys},
                       evaluations=[{"step": row["step"], **{key: row[key] for key in keys}} for row in evaluations])
    if isinstance(evaluator, RewardEvaluator):
        reference_mean, reference_se = mean_and_se(evaluator.reference_rewards)
        summary.update(heldout_prompts=len(evaluator.prompts), reference={"reward_mean": reference_mean, "reward_se": reference_se})
        figures["heldout"] = plot_evaluation(evaluations, summary["inputs"]["reward"])
        figures["reward_histograms"] = plot_reward_histograms(evaluator.reference_rewards, final["rewards"], summary["inputs"]["reward"])
        examples = [{"prompt": evaluator.texts[i], "before": evaluator.reference_texts[i], "before_reward": evaluator.reference_rewards[i],
                     "after": final["samples"][i], "after_reward": final["rewards"][i]} for i in range(min(5, len(evaluator.texts)))]
    elif evaluator is not None:
        summary.update(heldout_pairs=len(evaluator.pairs), heldout_prompts=len(evaluator.prompts))
        figures["heldout"] = plot_pair_evaluation(evaluations)
        examples = [{"prompt": prompt, "after": final["samples"][i]} for i, prompt in enumerate(evaluator.prompts[:5])]
    plot_paths = save_figures(figures, out / "plots")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    report = markdown_report if isinstance(evaluator, RewardEvaluator) else markdown_pairs_report
    (out / "report.md").write_text(report(summary, plot_paths, examples), encoding="utf-8")
