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

    DIR/samples.json     (sampled pairs) the reference's samples, written before the reward scores them
    DIR/pairs.jsonl      the training pairs (TRL's standard format; sampled pairs also carry chosen_score, rejected_score)
    DIR/heldout_pairs.jsonl  (--pairs) the pairs held out for evaluation
    DIR/pairs_counts.json how many pairs were formed, dropped or held out; the reference samples' mean reward
    DIR/checkpoints/     while training: the last checkpoint (`dpo-edu run --resume`); removed at the end
    DIR/metrics.jsonl    one line per optimizer step; evaluation steps carry "eval/..." keys too
    DIR/policy/          the trained policy (safetensors) and its tokenizer: AutoModelForCausalLM.from_pretrained loads it
    DIR/plots/*.png      loss, margins, accuracy; held-out evaluation; reward histograms (a reward to score with)
    DIR/report.md        the results table, the plots, five held-out prompts before and after
    DIR/summary.json     every number of the report, for scripts; written last (a folder without it can be resumed)

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
from .config import Profile
from .data import (
    NoRoomForResponse,
    TokenSeamError,
    as_standard,
    load_preferences,
    numbered_preferences,
    tokenize_pair,
    write_jsonl,
)
from .evaluate import PairsEvaluator, RewardEvaluator, implicit_rewards
from .models import model_provenance
from .precision import describe, resolve
from .prompts import load_prompts, read_prompts
from .rundir import RunFolder, RunFolderError
from .stages import (
    OpenRun,
    count_conversational,
    evaluation_summary,
    open_run,
    sample_pairs,
    save_policy,
    split_heldout,
    standard_pairs,
    train_config,
    train_stage,
    write_report,
)
from .train import TrainConfig
from .utils import device_name, get_device, seed_everything, sha256_file

# what `loss=` (dpo-edu run --loss-type ... --max-length ...) may set over the profile's TrainConfig
LOSS_SETTINGS = ("loss_type", "beta", "label_smoothing", "sft_weight", "simpo_gamma", "max_length", "max_prompt_length")
HELDOUT_FRACTION = 0.1


def check_heldout_fraction(value: float | None) -> None:
    """--heldout-fraction is a share: at least 0 and below 1 (None: the default)."""
    if value is not None and not 0 <= value < 1:
        raise ValueError(
            f"--heldout-fraction must be at least 0 and below 1 (the share of pairs or prompts held "
            f"out for evaluation), got {value}"
        )


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
    lines: dict[int, int] | None = None  # id(row) -> its line in the pairs file, for messages

    @classmethod
    def of(
        cls,
        profile: Profile,
        *,
        pairs=None,
        prompts=None,
        reward=None,
        heldout_fraction: float = HELDOUT_FRACTION,
        read_pairs: bool = True,
        log=print,
    ) -> Task:
        """Read and check every input before any work: a bad file or reward fails here, in one line.

        `read_pairs=False`: a resumed run, whose pairs are already in its folder.
        """
        if pairs is not None and (prompts is not None or reward is not None):
            raise ValueError(
                "--pairs trains on your pairs; --prompts and --reward sample new ones: give one or the other"
            )
        if pairs is not None:
            numbered = numbered_preferences(pairs, log=log) if read_pairs else []
            return cls(
                "pairs",
                pairs_file=Path(pairs),
                reward_name="",
                lines={id(row): line for line, row in numbered},
                rows=[row for _, row in numbered] if read_pairs else None,
            )
        reward_fn = rewards.load_reward(reward) if reward is not None else rewards.sentiment
        name = reward if reward is not None else "VADER"
        if prompts is None:
            return cls(
                "sentiment" if reward is None else "prompts",
                reward_fn,
                name,
                load_prompts("train")[: profile.run_train_prompts],
                load_prompts("heldout")[: profile.run_heldout_prompts],
            )
        if not heldout_fraction:
            raise ValueError("--prompts is evaluated on held-out prompts: --heldout-fraction must be above 0")
        train, heldout = split_heldout(
            [{"prompt": p} for p in read_prompts(prompts)], heldout_fraction, profile.run_seed
        )
        if not heldout:
            raise ValueError(f"{prompts}: at least two different prompts are needed (one to train on, one held out)")
        return cls(
            "prompts",
            reward_fn,
            name,
            [row["prompt"] for row in train][: profile.run_train_prompts],
            [row["prompt"] for row in heldout][: profile.run_heldout_prompts],
        )


# ------------------------------------------------------------ the inputs a run started with


def input_fingerprints(pairs=None, prompts=None, reward: str | None = None) -> dict[str, dict]:
    """{"pairs" | "prompts" | "reward": {"file", "sha256"}} of each input file (a reward: its module's source file)."""
    files = {"pairs": pairs, "prompts": prompts, "reward": rewards.reward_source(reward) if reward else None}
    return {
        name: {"file": str(path), "sha256": sha256_file(Path(path))}
        for name, path in files.items()
        if path is not None and Path(path).is_file()
    }


def check_inputs(folder: RunFolder, current: dict[str, dict]) -> None:
    """A resumed run reads its inputs again: refuse one that changed since the run's results were made from it.

    The prompts made the samples and the held-out set; the reward scored the pairs once pairs.jsonl exists (before
    that, a fixed reward is welcome: the saved samples are scored again); a --pairs run trains on its own copies
    (pairs.jsonl, heldout_pairs.jsonl). What may change is recorded anew.
    """
    recorded = folder.options().get("inputs") or {}
    scored = (folder.path / "pairs.jsonl").is_file()
    used = {"prompts": "its samples and held-out prompts", "reward": "the scores of its pairs" if scored else None}
    for name, then in recorded.items():
        if current.get(name) != then and used.get(name):
            raise RunFolderError(
                f"{then['file']} has changed since {folder.path} was started ({used[name]} came "
                f"from the earlier version, sha256 {then['sha256'][:12]}): put that version back, "
                f"or start a new run with --overwrite"
            )
    if current != recorded:
        folder.record(inputs=current)


# ------------------------------------------------------------ what a --pairs run can train and evaluate on


def usable_split(task: Task, tokenizer, config, profile: Profile, heldout_fraction: float) -> tuple[list, list]:
    """(training pairs, held-out pairs) of a --pairs file, in TRL's standard format.

    Refuses in one line, before the run folder is touched, a file that leaves
    nothing to train on, or (with --heldout-fraction above 0) nothing to evaluate on.
    """
    train, heldout = split_heldout(task.rows, heldout_fraction, profile.run_seed)
    if heldout_fraction and not heldout:
        raise ValueError(
            f"{task.pairs_file}: all {len(task.rows)} pairs share one prompt, so none can be held out "
            "for evaluation; add pairs with other prompts, or pass --heldout-fraction 0 to train without "
            "a held-out evaluation"
        )
    for name, rows in (("training", train), ("held-out", heldout)):
        if rows:
            _some_usable(task, tokenizer, config, rows, name)
    return standard_pairs(tokenizer, train), standard_pairs(tokenizer, heldout)


def _some_usable(task: Task, tokenizer, config, rows: list[dict], name: str) -> None:
    """Raise ValueError naming the file, line, field and the fix when no row of `rows` can be tokenised for training."""
    problems = []
    for row in rows:
        problem = _pair_problem(tokenizer, as_standard(tokenizer, row), config)
        if problem is None:
            return
        problems.append((task.lines.get(id(row)), problem))
    line, problem = problems[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    raise ValueError(f"{task.pairs_file}, line {line}{problem}{more}; none of the {len(rows)} {name} pairs can be used")


def _pair_problem(tokenizer, row: dict, config) -> str | None:
    """Why `data.tokenize_pair` refuses the pair (", field ...: what; the fix"), or None."""
    for field in ("chosen", "rejected"):
        try:
            tokenize_pair(
                tokenizer,
                row["prompt"],
                row[field],
                max_length=config.max_length,
                max_prompt_length=config.max_prompt_length,
                use_chat_template=config.use_chat_template,
            )
        except TokenSeamError:
            fix = (
                "end the prompt without that space and start the reply with it"
                if row["prompt"][-1:] in " \t"
                else "end the prompt, or start the reply, differently"
            )
            return (
                f", field {field!r}: the prompt's last token merges with the reply's first at "
                f"{row['prompt'][-12:]!r} + {row[field][:12]!r}, so the prompt's tokens would change; {fix}"
            )
        except NoRoomForResponse:
            return (
                f", field 'prompt': the prompt leaves no room for a reply in --max-length {config.max_length}; "
                "raise --max-length, or lower --max-prompt-length"
            )
    return None


# ------------------------------------------------------------ stage 1 in a run folder: the pairs, written first


def peak_memory_mb(device: torch.device) -> float:
    """The largest memory use of this process so far: CUDA's allocator peak on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_pairs_stage(
    task: Task, policy, tokenizer, profile: Profile, out: Path, split: tuple | None, precision: str, progress: bool
) -> tuple[list[dict], dict]:
    """Stage 1: the training pairs, written to out/pairs.jsonl (and out/heldout_pairs.jsonl for --pairs).

    Sampled pairs: the samples are written to out/samples.json before the reward scores them, so a reward that
    fails loses no sampling (`--resume` scores them again).
    """
    if task.kind == "pairs":
        train, heldout = split
        counts = {
            "source": str(task.pairs_file),
            "pairs": len(train),
            "heldout_pairs": len(heldout),
            "conversational": count_conversational(task.rows),
            "prompts": len({repr(row["prompt"]) for row in train}),
        }
        write_jsonl(heldout, out / "heldout_pairs.jsonl")
    else:
        train, counts = sample_pairs(
            policy,
            tokenizer,
            task.train_prompts,
            task.reward,
            per_prompt=profile.run_samples_per_prompt,
            max_new_tokens=profile.run_max_new_tokens,
            batch_size=profile.run_sample_batch_size,
            seed=profile.run_seed,
            rule=profile.run_pairing,
            min_gap=profile.run_min_gap,
            precision=precision,
            progress=progress,
            samples_path=out / "samples.json",
        )
    (out / "pairs_counts.json").write_text(json.dumps(counts, indent=1) + "\n", encoding="utf-8")
    write_jsonl(train, out / "pairs.jsonl")  # the run's first result: --resume starts from here
    return train, counts


def describe_pairs(task: Task, counts: dict, profile: Profile, seconds: float) -> str:
    if task.kind == "pairs":
        return (
            f"pairs: {counts['pairs']} for training, {counts['heldout_pairs']} held out (whole prompts), from {counts['source']} "
            f"({counts['conversational']} conversational)"
        )
    return (
        f"pairs: {counts['pairs']} from {counts['prompts']} prompts x {profile.run_samples_per_prompt} samples scored by "
        f"{task.reward_name} (dropped: {counts['small_gap']} with a score gap < {profile.run_min_gap}, "
        f"{counts['unusable_text']} unusable samples) in {seconds:.0f} s"
    )


def run(
    profile: Profile | str | None = None,
    out: str | Path = "runs/dpo",
    *,
    model=None,
    pairs=None,
    prompts=None,
    reward: str | None = None,
    heldout_fraction: float | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    precision: str | None = None,
    loss: dict | None = None,
    log=print,
) -> dict:
    """Pairs, training, evaluation and report; returns the summary (also in out/summary.json).

    Inputs (see the module docstring): nothing (the course's task), `prompts`
    (a .txt, .json or .jsonl file) with `reward` ("module:function" or
    "path/to/file.py:function"), or `pairs` (a .jsonl preference file), of
    which `heldout_fraction` (default 0.1) is held out by prompt; the profile
    caps how many prompts are used (run_train_prompts, run_heldout_prompts).
    `model`: a saved model folder or hub id (default: the course's SmolLM2).

    `out` is a run folder (`dpo_edu.rundir`), locked while the run writes it:
    an existing one is replaced only with `overwrite=True`, and only if it is
    a dpo-edu run. Training writes a checkpoint to out/checkpoints every
    `run_checkpoint_every` steps and on Ctrl-C; `resume=True` continues an
    interrupted run in `out` with the options it was started with (and refuses
    an input file that changed since): its samples or pairs if they were
    written, its last checkpoint if there is one, and ends with the metrics of
    an uninterrupted run. summary.json is written last: a run without it can be resumed.
    `precision` ("auto", "fp32", "bf16", "fp16"): the autocast of sampling,
    training and evaluation; the weights stay float32 either way.
    `loss`: TrainConfig settings over the profile's (LOSS_SETTINGS), e.g. {"loss_type": "simpo", "beta": 2.0}.
    """
    check_heldout_fraction(heldout_fraction)
    with open_run(
        out,
        "run",
        profile,
        model,
        overwrite=overwrite,
        resume=resume,
        precision=precision,
        loss=loss,
        pairs=pairs,
        prompts=prompts,
        reward=reward,
        heldout_fraction=heldout_fraction,
    ) as opened:
        if opened.options["heldout_fraction"] is None:
            opened.options["heldout_fraction"] = HELDOUT_FRACTION
        return _run(opened, progress=progress, log=log)


def _run(opened: OpenRun, *, progress: bool, log) -> dict:
    """Stages 1-5 in the folder `open_run` checked and locked, with the options it resolved."""
    profile, options, out, resume = opened.profile, opened.options, opened.folder.path, opened.resume
    config = loss_config(profile, opened.precision, options["loss"])  # bad settings fail here
    reuse_pairs = resume and (out / "pairs.jsonl").is_file()
    task = Task.of(
        profile,
        **{name: options[name] for name in ("pairs", "prompts", "reward", "heldout_fraction")},
        read_pairs=not reuse_pairs,
        log=log,
    )
    inputs = input_fingerprints(options["pairs"], options["prompts"], options["reward"])
    if resume:
        check_inputs(opened.folder, inputs)
    latest = checkpoint.latest_folder(out / "checkpoints") if resume else None
    if latest is not None:
        checkpoint.verify(latest)  # a damaged checkpoint fails now, not after minutes of work
    started = time.perf_counter()
    seed_everything(profile.run_seed)
    device = get_device()
    policy, tokenizer = opened.load(device)  # a missing model fails here, before the run directory is touched
    # which weights: after loading, so a cache built just now is named with its hash
    provenance = model_provenance(opened.model_source)
    split = (
        usable_split(task, tokenizer, config, profile, options["heldout_fraction"]) if task.rows is not None else None
    )
    opened.start(
        precision=opened.precision,
        loss=options["loss"] or None,
        **{name: None if options[name] is None else str(options[name]) for name in ("pairs", "prompts")},
        reward=options["reward"],
        heldout_fraction=options["heldout_fraction"] if task.kind != "sentiment" else None,
        inputs=inputs,
    )
    log(
        f"model {provenance['weights']} on {device_name(device)}, {describe(resolve(opened.precision, device))}; "
        f"profile {profile.name}; {'resuming' if resume else 'writing'} {out}"
    )
    train_pairs, pair_counts = pairs_stage(
        opened, task, policy, tokenizer, split, reuse=reuse_pairs, progress=progress, log=log
    )
    if latest is None:
        (out / "metrics.jsonl").unlink(missing_ok=True)  # steps logged before any checkpoint are trained again
    pairs_seconds = time.perf_counter() - started
    log(describe_pairs(task, pair_counts, profile, pairs_seconds))

    evaluator = make_evaluator(opened, task, policy, tokenizer, config)
    history, train_seconds, eval_seconds = train_stage(
        policy,
        tokenizer,
        train_pairs,
        config,
        evaluator,
        profile,
        out,
        resume=latest is not None,
        progress=progress,
        log=log,
    )
    shutil.rmtree(out / "policy", ignore_errors=True)  # one a resumed run saved before its report failed
    save_policy(policy, tokenizer, out / "policy")
    seconds = {"pairs": pairs_seconds, "train": train_seconds, "evaluation": eval_seconds}
    summary = run_summary(opened, task, config, device, provenance, pair_counts, history, seconds)
    summary["seconds"]["total"] = time.perf_counter() - started
    summary.update(evaluation_summary(evaluator, history))
    write_report(summary, history, evaluator, out)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # policy/ and the report hold the result; optimizer: 2 GB
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")  # last: it is finished
    result = (
        evaluator.describe({f"eval/{key}": value for key, value in summary["final"].items()})
        if evaluator
        else "no held-out pairs"
    )
    log(f"done in {summary['seconds']['total']:.0f} s: {result}; see {out / 'report.md'}")
    return summary


def loss_config(profile: Profile, precision: str, loss: dict | None) -> TrainConfig:
    """The profile's TrainConfig with `loss`'s settings (LOSS_SETTINGS) over it."""
    unknown = set(loss or {}) - set(LOSS_SETTINGS)
    if unknown:
        raise ValueError(f"loss settings {sorted(unknown)} are not among {', '.join(LOSS_SETTINGS)}")
    return train_config(profile, mixed_precision=precision, **(loss or {}))


def run_summary(
    opened: OpenRun, task: Task, config: TrainConfig, device, provenance: dict, pair_counts: dict, history, seconds
) -> dict:
    """summary.json's numbers before the evaluations' (`evaluation_summary`): what ran, on what, and what training did."""
    options = opened.options
    return {
        "task": task.kind,
        "inputs": {
            "pairs": options["pairs"] and str(options["pairs"]),
            "prompts": options["prompts"] and str(options["prompts"]),
            "reward": task.reward_name,
        },
        "model": provenance,
        "device": device_name(device),
        "precision": resolve(opened.precision, device),
        "profile": opened.profile.name,
        "train_config": dataclasses.asdict(config),
        "pairs": pair_counts,
        "steps": len(history),
        "step0_loss": history[0]["loss"],
        "step0_margin": history[0]["rewards/margins"],
        "implicit_rewards": implicit_rewards(history),
        "resumed": opened.resume,
        "peak_memory_mb": peak_memory_mb(device),
        "seconds": dict(seconds),
    }


def pairs_stage(opened: OpenRun, task: Task, policy, tokenizer, split, *, reuse: bool, progress: bool, log) -> tuple:
    """Stage 1, or its result read back (`reuse`, a resumed run that wrote it): (training pairs, counts).

    The first result in the folder: a run that `--overwrite` replaced goes once this stage succeeds, and comes
    back if it fails before any sample is written.
    """
    out, folder = opened.folder.path, opened.folder
    try:
        if reuse:
            train_pairs = load_preferences(out / "pairs.jsonl", log=log)
            pair_counts = json.loads((out / "pairs_counts.json").read_text(encoding="utf-8"))
        else:
            train_pairs, pair_counts = make_pairs_stage(
                task, policy, tokenizer, opened.profile, out, split, opened.precision, progress
            )
    except BaseException:
        if (out / "samples.json").is_file():
            folder.keep()  # the samples are a result: --resume scores them again
        else:
            folder.abandon()  # a new folder goes, a replaced run comes back
        raise
    folder.keep()  # from here on the old run (if --overwrite replaced one) is gone, and this run is resumable
    return train_pairs, pair_counts


def make_evaluator(opened: OpenRun, task: Task, policy, tokenizer, config: TrainConfig):
    """Stage 2: held-out prompts scored by the task's reward, or held-out pairs (None when a --pairs run held none out)."""
    profile, out = opened.profile, opened.folder.path
    sizes = dict(
        max_new_tokens=profile.run_max_new_tokens,
        batch_size=profile.run_sample_batch_size,
        seed=profile.run_seed,
        model_source=opened.model_source,
        precision=opened.precision,
    )
    if task.kind != "pairs":
        return RewardEvaluator(policy, tokenizer, task.heldout_prompts, task.reward, **sizes)
    heldout_path = out / "heldout_pairs.jsonl"
    heldout = load_preferences(heldout_path, log=None) if heldout_path.stat().st_size else []
    return PairsEvaluator(policy, tokenizer, heldout, config, **sizes) if heldout else None
