"""The stages of a DPO run, each a function of its inputs that returns what it made:
0 the run folder, its options and the model -> 1 pairs (sample, score, pair; or a user's file, split) ->
2 the evaluators (`dpo_edu.evaluate`) -> 3 train, evaluating as it goes -> 4 keep the policy ->
5 the numbers and the report.

`dpo-edu run` (`dpo_edu.run`) strings them together for three kinds of input:

* the course's task: movie-review openings, continued by the reference and
  scored by VADER (`dpo_edu.rewards.sentiment`, the default reward);
* `--prompts FILE --reward SPEC`: your prompts and your reward function, in
  TRL's convention `reward(prompts, completions, **kwargs) -> list[float]`;
  the same stages, with your reward wherever the course's task uses VADER;
* `--pairs FILE`: your preference pairs. Nothing is sampled, and since there
  is no reward to score samples with, the evaluation is on held-out pairs
  (`PairsEvaluator`: implicit-reward accuracy and margins) and the KL on their
  prompts.

`dpo-edu frontier` (`dpo_edu.frontier`) opens its folder with the same stage 0 and calls stage 1 for each seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .config import Profile, get_profile
from .data import as_standard, is_conversational, prompt_text
from .evaluate import RewardEvaluator, mean_and_se
from .generation import Samples, make_pairs, sample_completions
from .models import load_model
from .report import (
    markdown_pairs_report,
    markdown_report,
    plot_evaluation,
    plot_pair_evaluation,
    plot_reward_histograms,
    plot_training,
    save_figures,
)
from .rewards import RewardError, RewardFunction, describe_function, rewards_of
from .rundir import RunFolder
from .train import TrainConfig, train_dpo
from .utils import quiet_transformers, staged

# ------------------------------------------------------------ stage 0: the run folder, its options and the model


@dataclasses.dataclass
class OpenRun:
    """A run folder checked and locked (`RunFolder`), with the options the run goes on with: as given, or, for
    `resume`, as the run was started (its marker). `options` holds the command's own options by name."""

    folder: RunFolder
    profile: Profile
    model_source: str | Path | None  # a saved folder or hub id; None: the course's SmolLM2
    precision: str
    options: dict
    resume: bool

    def load(self, device: torch.device):
        """(model, tokenizer) on `device`: a missing model fails here, before the folder is touched."""
        return load_model(self.model_source, device=device)

    def start(self, **options) -> None:
        """A new run writes its marker (profile, model, then `options`); a resumed run keeps the one it has."""
        if not self.resume:
            model = None if self.model_source is None else str(self.model_source)
            self.folder.start(profile=self.profile.name, model=model, **options)


@contextlib.contextmanager
def open_run(
    out: str | Path,
    kind: str,
    profile: Profile | str | None,
    model_source,
    *,
    overwrite: bool,
    resume: bool,
    precision: str | None,
    **options,
) -> Iterator[OpenRun]:
    """Stage 0 of `dpo-edu run` and `dpo-edu frontier`: check and lock the folder `out` (kind "run" or "frontier"),
    replay a resumed run's options (one given that differs is refused in one line), resolve the profile's name.
    The folder stays locked until the `with` block ends; precision None is "auto"."""
    with RunFolder.check(out, kind, overwrite=overwrite, resume=resume) as folder:
        if resume:
            profile, model_source, precision, *values = folder.resume_options(
                profile, model_source, precision=precision, **options
            )
            options = dict(zip(options, values))
        profile = profile if isinstance(profile, Profile) else get_profile(profile)
        yield OpenRun(folder, profile, model_source, precision or "auto", options, resume)


def train_config(profile: Profile, **overrides) -> TrainConfig:
    """The trainer's settings for the full run at `profile`'s sizes (plain-text prompts: the text is given as the model sees it)."""
    settings = dict(
        beta=profile.run_beta,
        learning_rate=profile.run_learning_rate,
        batch_size=profile.run_batch_size,
        epochs=profile.run_epochs,
        warmup_steps=profile.run_warmup_steps,
        max_length=profile.run_max_length,
        max_prompt_length=profile.run_max_prompt_length,
        use_chat_template=False,
        seed=profile.run_seed,
    )
    return TrainConfig(**{**settings, **overrides})


# ------------------------------------------------------------ stage 1: sample from the reference, score, pair


def sample_pairs(
    model,
    tokenizer,
    prompts: Sequence,
    reward_fn: RewardFunction,
    *,
    per_prompt: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    rule: str,
    min_gap: float,
    precision: str = "auto",
    progress: bool = False,
    samples_path: str | Path | None = None,
) -> tuple[list[dict], dict]:
    """Sample `per_prompt` completions of each prompt from `model`, score them with `reward_fn`, pair them (`make_pairs`).

    Prompts are strings (continued as they are) or conversations (continued
    through the chat template). Returns (pairs in TRL's standard format with
    chosen_score and rejected_score, counts with the samples' mean reward).
    `samples_path`: the samples are written there before they are scored, and
    read back instead of sampled when the file exists (a run resumed after its
    reward failed). Raises RewardError when the scores leave no pair to train on.
    """
    texts = [prompt_text(tokenizer, prompt) for prompt in prompts]
    samples = read_samples(samples_path, texts) if samples_path is not None and Path(samples_path).is_file() else None
    if samples is None:
        samples = sample_completions(
            model,
            tokenizer,
            texts,
            per_prompt=per_prompt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            seed=seed,
            progress=progress,
            precision=precision,
        )
        if samples_path is not None:
            write_samples(samples, samples_path)
    scores = rewards_of(reward_fn, [prompt for prompt in prompts for _ in range(per_prompt)], samples.texts)
    pairs, counts = make_pairs(samples, scores, rule=rule, min_gap=min_gap, tokenizer=tokenizer)
    if not pairs:
        raise RewardError(_why_no_pairs(reward_fn, scores, counts, per_prompt, min_gap))
    mean, se = mean_and_se(scores)
    counts.update(
        samples=len(scores),
        sample_reward_mean=mean,
        sample_reward_se=se,
        sample_reward_zero_fraction=sum(s == 0 for s in scores) / len(scores),
    )
    return pairs, counts


def _why_no_pairs(reward_fn: RewardFunction, scores: list[float], counts: dict, per_prompt: int, min_gap: float) -> str:
    """Why `make_pairs` made no pair: every score tied, every gap too small, or no usable sample."""
    name = f"reward function {describe_function(reward_fn)}"
    if len(set(scores)) == 1:
        return (
            f"{name} gave all {len(scores)} samples the same score ({scores[0]:g}), so no sample is better than "
            f"another and there is nothing to train on; give the reward some spread (better completions must "
            f"score higher)"
        )
    if counts["small_gap"]:
        groups = [scores[i : i + per_prompt] for i in range(0, len(scores), per_prompt)]
        gap = max(max(group) - min(group) for group in groups)
        return (
            f"{name}: no two samples of a prompt differ by at least {min_gap:g} (the profile's run_min_gap; the "
            f"largest gap is {gap:.3g}), so no pair was made; make the reward's differences larger"
        )
    return (
        f"none of the {len(scores)} samples could be paired ({counts['unusable_text']} were empty or did not "
        f"re-tokenise after their prompt); raise the profile's run_samples_per_prompt or use other prompts"
    )


def write_samples(samples: Samples, path: str | Path) -> None:
    """`samples` as one JSON object (the fields of `Samples`), written all at once."""
    with staged(path) as staging:
        staging.write_text(json.dumps(dataclasses.asdict(samples), ensure_ascii=False) + "\n", encoding="utf-8")


def read_samples(path: str | Path, prompts: Sequence[str]) -> Samples:
    """The samples `write_samples` wrote, which must be of `prompts` (ValueError naming the file otherwise)."""
    samples = Samples(**json.loads(Path(path).read_text(encoding="utf-8")))
    if samples.prompts != list(prompts):
        raise ValueError(f"{path} holds samples of other prompts than this run's; delete it to sample again")
    return samples


# ------------------------------------------------------------ stage 1 for --pairs: a user's file, split


def split_heldout(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): whole prompts are held out, about `fraction` of the rows, chosen at random by `seed`.

    Holding out by prompt keeps a prompt's pairs on one side, so the held-out
    numbers measure prompts the policy never trained on.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"heldout_fraction must be in [0, 1), got {fraction}")
    by_prompt: dict[str, list[dict]] = {}
    for row in rows:
        by_prompt.setdefault(repr(row["prompt"]), []).append(row)
    groups = list(by_prompt.values())
    random.Random(seed).shuffle(groups)
    heldout: list[dict] = []
    while groups and len(heldout) < fraction * len(rows) and len(groups) > 1:
        heldout += groups.pop()
    train = [row for group in groups for row in group]
    return train, heldout


def standard_pairs(tokenizer, rows: list[dict]) -> list[dict]:
    """Every row in TRL's standard format (`dpo_edu.data.as_standard`: conversations through the chat template)."""
    return [as_standard(tokenizer, row) for row in rows]


# ------------------------------------------------------------ stage 3: train, evaluating as it goes


def train_stage(
    policy,
    tokenizer,
    pairs: list[dict],
    config,
    evaluator,
    profile: Profile,
    out: Path,
    *,
    resume: bool,
    progress: bool,
    log,
) -> tuple[list[dict], float, float]:
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
    history = train_dpo(
        policy,
        tokenizer,
        pairs,
        config,
        metrics_path=out / "metrics.jsonl",
        on_step=on_step,
        progress=progress,
        checkpoint_dir=out / "checkpoints",
        checkpoint_every=profile.run_checkpoint_every,
        resume=resume,
        log=log,
    )
    # resumed after the last step: evaluate again
    if evaluator is not None and evaluator.results[-1]["step"] != len(history):
        evaluate(len(history))
    return history, time.perf_counter() - started, eval_seconds


# ------------------------------------------------------------ stage 4: keep the policy


def save_policy(model, tokenizer, target) -> Any:
    """save_pretrained (safetensors) with the tokenizer, all at once (`dpo_edu.utils.staged`): it loads with
    `AutoModelForCausalLM.from_pretrained(target)`, TRL's trainers (`model=str(target)`) and `dpo-edu run --model`."""
    with staged(target, folder=True) as staging, quiet_transformers():
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return target


# ------------------------------------------------------------ stage 5: the numbers and the report


def evaluation_summary(evaluator, history: list[dict]) -> dict:
    """Stage 5's numbers for summary.json: the final and every evaluation, and what they were measured on
    (empty without an evaluator). A resumed run's earlier evaluations come from its metrics.jsonl `history`."""
    if evaluator is None:
        return {}
    keys = evaluator.keys
    evaluations = evaluator.results[:1] + [
        {"step": row["step"], **{key: row[f"eval/{key}"] for key in keys}} for row in history if "eval/kl" in row
    ]
    numbers = {
        "final": {key: evaluator.results[-1][key] for key in keys},
        "evaluations": [{"step": row["step"], **{key: row[key] for key in keys}} for row in evaluations],
    }
    if isinstance(evaluator, RewardEvaluator):
        reference_mean, reference_se = mean_and_se(evaluator.reference_rewards)
        numbers.update(
            heldout_prompts=len(evaluator.prompts), reference={"reward_mean": reference_mean, "reward_se": reference_se}
        )
    else:
        numbers.update(heldout_pairs=len(evaluator.pairs), heldout_prompts=len(evaluator.prompts))
    return numbers


def write_report(summary: dict, history: list[dict], evaluator, out: Path) -> None:
    """Stage 5: the plots and report.md, from `summary` (with `evaluation_summary`'s numbers) and the evaluator."""
    figures = {"training": plot_training(history)}
    examples = []
    final = evaluator.results[-1] if evaluator is not None else None
    if isinstance(evaluator, RewardEvaluator):
        figures["heldout"] = plot_evaluation(summary["evaluations"], summary["inputs"]["reward"])
        figures["reward_histograms"] = plot_reward_histograms(
            evaluator.reference_rewards, final["rewards"], summary["inputs"]["reward"]
        )
        examples = [
            {
                "prompt": evaluator.texts[i],
                "before": evaluator.reference_texts[i],
                "before_reward": evaluator.reference_rewards[i],
                "after": final["samples"][i],
                "after_reward": final["rewards"][i],
            }
            for i in range(min(5, len(evaluator.texts)))
        ]
    elif evaluator is not None:
        figures["heldout"] = plot_pair_evaluation(summary["evaluations"])
        examples = [{"prompt": prompt, "after": final["samples"][i]} for i, prompt in enumerate(evaluator.prompts[:5])]
    plot_paths = save_figures(figures, out / "plots")
    report = markdown_report if isinstance(evaluator, RewardEvaluator) else markdown_pairs_report
    (out / "report.md").write_text(report(summary, plot_paths, examples), encoding="utf-8")


def count_conversational(rows: list[dict]) -> int:
    return sum(is_conversational(row) for row in rows)
